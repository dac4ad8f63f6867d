//! Code generated from `proto/`: etcd's Auth, Lock and Election services and its auth
//! records, wire-compatible with etcd 3.5.
#![allow(missing_docs, clippy::all, clippy::pedantic)]

/// etcd's auth records: users, roles, permissions.
pub mod authpb {
    tonic::include_proto!("authpb");
}

/// etcd's Auth service.
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

/// etcd's Lock service.
pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
}

/// etcd's Election service.
pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
}
