//! The bodies of cached views compressed once, and the choice of encoding a request asks for.
//!
//! The query API compresses its answers with tower-http's `CompressionLayer` (gzip and
//! Brotli, bodies of at least [`COMPRESS_FROM_BYTES`]). A cache hit answered before that layer
//! ([`crate::catalog_hits`]) must answer what the layer would: the same encoding for the same
//! `Accept-Encoding`, `Vary: Accept-Encoding` on the same answers. It sends the entry's body
//! compressed on the first request that asked for that encoding, not once per request.

use axum::http::header::ACCEPT_ENCODING;
use axum::http::HeaderMap;
use bytes::Bytes;
use std::io::Write;
use std::sync::OnceLock;

/// The smallest body `CompressionLayer`'s default predicate compresses.
pub const COMPRESS_FROM_BYTES: usize = 32;

/// The encodings the query API answers in, from least to most preferred at equal q-value
/// (the order tower-http breaks ties in).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Encoding {
    Identity,
    Gzip,
    Brotli,
}

impl Encoding {
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Identity => "identity",
            Encoding::Gzip => "gzip",
            Encoding::Brotli => "br",
        }
    }
}

/// The encoding `CompressionLayer` picks for these request headers: the highest q-value among
/// gzip, br and identity (unknown codings ignored), identity when none is acceptable. `None`
/// when a q-value is malformed: that rare request is left to the layer itself.
pub fn preferred(headers: &HeaderMap) -> Option<Encoding> {
    let mut best: Option<(u16, Encoding)> = None;
    for value in headers.get_all(ACCEPT_ENCODING) {
        for item in value.to_str().ok()?.split(',') {
            let mut parts = item.splitn(2, ';');
            let name = parts.next().unwrap_or_default().trim();
            let encoding = if name.eq_ignore_ascii_case("gzip") || name.eq_ignore_ascii_case("x-gzip") {
                Encoding::Gzip
            } else if name.eq_ignore_ascii_case("br") {
                Encoding::Brotli
            } else if name.eq_ignore_ascii_case("identity") {
                Encoding::Identity
            } else {
                continue;
            };
            let q = match parts.next() {
                None => 1000,
                Some(q) => qvalue(q.trim())?,
            };
            if q > 0 && best.is_none_or(|b| (q, encoding) >= b) {
                best = Some((q, encoding));
            }
        }
    }
    Some(best.map_or(Encoding::Identity, |(_, e)| e))
}

/// `q=0.5` as thousandths (RFC 9110: "0" or "1" and at most three decimals).
fn qvalue(s: &str) -> Option<u16> {
    let v = s.strip_prefix("q=").or_else(|| s.strip_prefix("Q="))?;
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let thousandths: u16 = format!("{frac:0<3}").parse().ok()?;
    match int {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

/// A body's compressed forms, each made on first use.
#[derive(Debug, Clone, Default)]
pub struct Compressed {
    gzip: OnceLock<Bytes>,
    br: OnceLock<Bytes>,
}

impl Compressed {
    /// `body` in `encoding` (identity: `body` itself).
    pub fn get(&self, encoding: Encoding, body: &Bytes) -> Bytes {
        match encoding {
            Encoding::Identity => body.clone(),
            Encoding::Gzip => self.gzip.get_or_init(|| gzip(body)).clone(),
            Encoding::Brotli => self.br.get_or_init(|| brotli(body)).clone(),
        }
    }
}

fn gzip(body: &[u8]) -> Bytes {
    let mut encoder = flate2::write::GzEncoder::new(Vec::with_capacity(body.len()), flate2::Compression::default());
    // Writing into a Vec cannot fail.
    let _ = encoder.write_all(body);
    Bytes::from(encoder.finish().unwrap_or_default())
}

fn brotli(body: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(body.len());
    let params = brotli::enc::BrotliEncoderParams {
        quality: 5,
        ..Default::default()
    };
    let _ = brotli::BrotliCompress(&mut &body[..], &mut out, &params);
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use std::io::Read;

    fn accept(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn the_choice_is_the_compression_layers() {
        use Encoding::*;
        let cases: [(&[&str], Option<Encoding>); 12] = [
            (&[], Some(Identity)),
            (&["gzip"], Some(Gzip)),
            (&["gzip, deflate, br, zstd"], Some(Brotli)),
            (&["br;q=0.5, gzip"], Some(Gzip)),
            (&["br;q=0.5, gzip;q=0.5"], Some(Brotli)),
            (&["x-gzip"], Some(Gzip)),
            (&["deflate, zstd"], Some(Identity)),
            (&["gzip;q=0, br;q=0"], Some(Identity)),
            (&["identity, gzip;q=0.9"], Some(Identity)),
            (&["gzip", "br"], Some(Brotli)),
            (&["GZIP;Q=1.000"], Some(Gzip)),
            (&["gzip;q=2"], None),
        ];
        for (headers, want) in cases {
            assert_eq!(preferred(&accept(headers)), want, "{headers:?}");
        }
    }

    #[test]
    fn compressed_bodies_decompress_to_the_body_and_are_made_once() {
        let body = Bytes::from(r#"{"sku":"A-1","name":"Item A-1","price":{"minor":1999,"currency":"EUR"}}"#.repeat(3));
        let c = Compressed::default();
        let gz = c.get(Encoding::Gzip, &body);
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(&gz[..]).read_to_end(&mut plain).unwrap();
        assert_eq!(plain, body);
        let br = c.get(Encoding::Brotli, &body);
        let mut plain = Vec::new();
        brotli::Decompressor::new(&br[..], 4096)
            .read_to_end(&mut plain)
            .unwrap();
        assert_eq!(plain, body);
        assert_eq!(
            c.get(Encoding::Gzip, &body).as_ptr(),
            gz.as_ptr(),
            "made once, then shared"
        );
        assert_eq!(c.get(Encoding::Identity, &body), body);
    }
}
