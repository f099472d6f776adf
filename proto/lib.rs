//! Generated types and gRPC stubs for the `rocketrides.v1` package.

pub mod v1 {
    tonic::include_proto!("rocketrides.v1");
}

/// Encoded descriptors of every file in `rocketrides.v1`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("rocketrides_descriptor");

/// The well-known types the messages use (`Timestamp`).
pub use prost_types;
