//! Shared helpers for the black-box interop tests: generated OCI layouts (`oci`), the real origin
//! registry and skopeo (`origin`), and wharf itself served in-process on a loopback port (`wharf`).
//!
//! Each test binary that declares `mod support;` compiles its own copy and uses a subset of it.
#![allow(dead_code)]

pub mod oci;
pub mod origin;
pub mod wharf;
