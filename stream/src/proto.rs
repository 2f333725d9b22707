//! The wire types and service traits generated from `proto/` (see `build.rs`), in modules that
//! follow the protobuf packages (the generated code refers across them by those paths).

#![allow(clippy::all, missing_docs)]

pub mod event_store {
    pub mod client {
        tonic::include_proto!("event_store.client");

        pub mod streams {
            tonic::include_proto!("event_store.client.streams");
        }

        pub mod server_features {
            tonic::include_proto!("event_store.client.server_features");
        }

        pub mod gossip {
            tonic::include_proto!("event_store.client.gossip");
        }
    }
}

pub mod google {
    pub mod rpc {
        tonic::include_proto!("google.rpc");
    }
}

/// The package `event_store.client`: ids, stream names, positions shared by the services.
pub use event_store::client as shared;
pub use event_store::client::{gossip, server_features, streams};
