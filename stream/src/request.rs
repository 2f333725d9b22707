//! What a `Streams.Read` request asks for, checked before anything is read: which stream (or
//! `$all`), from where, which way, how many (or a subscription), the filter and the id form.

use crate::filter::EventFilter;
use crate::proto::streams::read_req::options::{
    all_options, stream_options, uuid_option, CountOption, FilterOption, ReadDirection, StreamOption,
};
use crate::proto::streams::read_req::Options;
use crate::recorded::UuidForm;
use surge_events::StreamId;
use tonic::Status;

/// Where a read of one stream starts (Surge's versions: revision + 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamFrom {
    Start,
    End,
    /// The event with this stream revision (0-based).
    Revision(u64),
}

/// Where a read of `$all` starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllFrom {
    Start,
    End,
    /// A store position (the client's commit position).
    Position(u64),
}

#[derive(Debug, Clone)]
pub enum Source {
    Stream { stream: StreamId, from: StreamFrom },
    All { from: AllFrom, filter: Option<EventFilter> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Forwards,
    Backwards,
}

#[derive(Debug, Clone)]
pub struct ReadRequest {
    pub source: Source,
    pub direction: Direction,
    /// `None`: a subscription (forwards, then live).
    pub count: Option<u64>,
    pub uuid_form: UuidForm,
    /// 1 and above: the client understands first/last stream position messages.
    pub compatibility: u32,
}

impl ReadRequest {
    pub fn parse(options: Options) -> Result<ReadRequest, Status> {
        let direction = match ReadDirection::try_from(options.read_direction) {
            Ok(ReadDirection::Forwards) => Direction::Forwards,
            Ok(ReadDirection::Backwards) => Direction::Backwards,
            Err(_) => return Err(Status::invalid_argument("unknown read direction")),
        };
        let count = match options.count_option {
            Some(CountOption::Count(n)) => Some(n),
            Some(CountOption::Subscription(_)) => None,
            None => return Err(Status::invalid_argument("a read needs a count or subscription options")),
        };
        if count.is_none() && direction == Direction::Backwards {
            return Err(Status::invalid_argument("subscriptions read forwards"));
        }
        let source = match options.stream_option {
            Some(StreamOption::Stream(s)) => {
                let name = s
                    .stream_identifier
                    .map(|id| id.stream_name)
                    .ok_or_else(|| Status::invalid_argument("a stream read needs a stream name"))?;
                let name = String::from_utf8(name).map_err(|_| Status::invalid_argument("stream names are UTF-8"))?;
                if name.is_empty() {
                    return Err(Status::invalid_argument("a stream read needs a stream name"));
                }
                let from = match s.revision_option {
                    Some(stream_options::RevisionOption::Revision(r)) => StreamFrom::Revision(r),
                    Some(stream_options::RevisionOption::Start(_)) | None => StreamFrom::Start,
                    Some(stream_options::RevisionOption::End(_)) => StreamFrom::End,
                };
                Source::Stream {
                    stream: StreamId(name),
                    from,
                }
            }
            Some(StreamOption::All(a)) => {
                let from = match a.all_option {
                    Some(all_options::AllOption::Position(p)) => AllFrom::Position(p.commit_position),
                    Some(all_options::AllOption::Start(_)) | None => AllFrom::Start,
                    Some(all_options::AllOption::End(_)) => AllFrom::End,
                };
                let filter = match &options.filter_option {
                    Some(FilterOption::Filter(f)) => Some(EventFilter::parse(f)?),
                    Some(FilterOption::NoFilter(_)) | None => None,
                };
                Source::All { from, filter }
            }
            None => return Err(Status::invalid_argument("a read needs a stream or $all")),
        };
        let uuid_form = match options.uuid_option.and_then(|u| u.content) {
            Some(uuid_option::Content::String(_)) => UuidForm::String,
            Some(uuid_option::Content::Structured(_)) | None => UuidForm::Structured,
        };
        Ok(ReadRequest {
            source,
            direction,
            count,
            uuid_form,
            compatibility: options.control_option.map_or(0, |c| c.compatibility),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::shared::{Empty, StreamIdentifier};
    use crate::proto::streams::read_req::options::{AllOptions, StreamOptions, SubscriptionOptions};

    fn stream_options(from: stream_options::RevisionOption) -> Options {
        Options {
            stream_option: Some(StreamOption::Stream(StreamOptions {
                stream_identifier: Some(StreamIdentifier {
                    stream_name: b"order-1".to_vec(),
                }),
                revision_option: Some(from),
            })),
            read_direction: ReadDirection::Backwards as i32,
            resolve_links: false,
            count_option: Some(CountOption::Count(5)),
            filter_option: Some(FilterOption::NoFilter(Empty {})),
            uuid_option: None,
            control_option: None,
        }
    }

    #[test]
    fn a_backwards_stream_read_from_a_revision() {
        let r = ReadRequest::parse(stream_options(stream_options::RevisionOption::Revision(7))).unwrap();
        assert_eq!(r.direction, Direction::Backwards);
        assert_eq!(r.count, Some(5));
        assert_eq!(r.uuid_form, UuidForm::Structured);
        match r.source {
            Source::Stream { stream, from } => {
                assert_eq!(stream.as_str(), "order-1");
                assert_eq!(from, StreamFrom::Revision(7));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_backwards_subscription_is_refused() {
        let mut o = Options {
            stream_option: Some(StreamOption::All(AllOptions {
                all_option: Some(all_options::AllOption::End(Empty {})),
            })),
            ..stream_options(stream_options::RevisionOption::Start(Empty {}))
        };
        o.count_option = Some(CountOption::Subscription(SubscriptionOptions {}));
        assert_eq!(ReadRequest::parse(o).unwrap_err().code(), tonic::Code::InvalidArgument);
    }
}
