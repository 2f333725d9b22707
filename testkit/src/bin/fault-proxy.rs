//! `fault-proxy`: a TCP proxy on loopback that a script can cut, for `./dev chaos`.
//!
//! `fault-proxy --listen 127.0.0.1:15432 --target 127.0.0.1:5432` forwards every connection
//! to the target ([`surge_testkit::faults::TcpProxy`]). SIGUSR1 cuts the link: every open
//! connection is dropped and new ones are refused (accepted, then closed at once). SIGUSR2
//! restores it. SIGTERM or SIGINT ends the proxy. A service whose database URL names the proxy
//! then loses Postgres as it would behind a broken network, while Postgres and every other
//! client of it go on. Tooling beside the product: not part of the `surge` binary.

use std::net::SocketAddr;
use surge_testkit::faults::TcpProxy;
use tokio::signal::unix::{signal, SignalKind};

const USAGE: &str = "usage: fault-proxy --listen <addr:port> --target <addr:port> \
                     (SIGUSR1 cuts every connection and refuses new ones, SIGUSR2 restores)";

struct Args {
    listen: SocketAddr,
    target: SocketAddr,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let (mut listen, mut target) = (None, None);
    while let Some(flag) = args.next() {
        let slot = match flag.as_str() {
            "--listen" => &mut listen,
            "--target" => &mut target,
            "-h" | "--help" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        };
        let value = args.next().ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let addr: SocketAddr = value.parse().map_err(|e| format!("{flag} {value}: {e}"))?;
        *slot = Some(addr);
    }
    let listen = listen.ok_or_else(|| format!("--listen is required\n{USAGE}"))?;
    let target = target.ok_or_else(|| format!("--target is required\n{USAGE}"))?;
    // Faults are injected on this machine only.
    if !listen.ip().is_loopback() || !target.ip().is_loopback() {
        return Err(format!("fault-proxy works on loopback only (got {listen} -> {target})"));
    }
    Ok(Args { listen, target })
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(message) => {
            eprintln!("fault-proxy: {message}");
            std::process::exit(2);
        }
    };
    let proxy = match TcpProxy::bind(args.listen, args.target).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("fault-proxy: cannot listen on {}: {e}", args.listen);
            std::process::exit(1);
        }
    };
    let (Ok(mut cut), Ok(mut restore), Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::user_defined1()),
        signal(SignalKind::user_defined2()),
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        eprintln!("fault-proxy: cannot install signal handlers");
        std::process::exit(1);
    };
    eprintln!("fault-proxy: {} -> {} (up)", proxy.addr, args.target);
    loop {
        tokio::select! {
            _ = cut.recv() => {
                proxy.cut();
                eprintln!("fault-proxy: cut (connections dropped, new ones refused)");
            }
            _ = restore.recv() => {
                proxy.restore();
                eprintln!("fault-proxy: restored");
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_args;

    fn args(s: &str) -> impl Iterator<Item = String> + '_ {
        s.split_whitespace().map(str::to_string)
    }

    #[test]
    fn both_addresses_are_required_and_on_loopback() {
        let a = parse_args(args("--listen 127.0.0.1:15432 --target 127.0.0.1:5432")).unwrap();
        assert_eq!((a.listen.port(), a.target.port()), (15432, 5432));
        assert!(parse_args(args("--listen 127.0.0.1:15432")).is_err());
        assert!(parse_args(args("--listen 127.0.0.1:15432 --target 10.0.0.5:5432")).is_err());
        assert!(parse_args(args("--listen 127.0.0.1:15432 --target nowhere")).is_err());
        assert!(parse_args(args("--verbose")).is_err());
    }
}
