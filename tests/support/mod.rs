//! Shared helpers for the black-box tests: generated OCI layouts (`oci`), the real origin
//! registry and skopeo (`origin`), the go command and a reference checksum database
//! (`gotools`), generated certificates (`tlsgen`), and wharf itself served in-process on a
//! loopback port (`wharf`).
//!
//! Each test binary that declares `mod support;` compiles its own copy and uses a subset of it.
#![allow(dead_code)]

pub mod gotools;
pub mod oci;
pub mod origin;
pub mod tlsgen;
pub mod wharf;
