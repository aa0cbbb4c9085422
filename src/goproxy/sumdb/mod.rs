//! Client side of the Go checksum database (the sum.golang.org protocol): signed notes
//! (`note`), the transparency-log math and tile authentication (`tlog`), and the lookup
//! algorithm of golang.org/x/mod/sumdb/client.go over an abstract tile source (`verifier`).
//!
//! Pure logic: no HTTP, no disk. The caller supplies a `SumdbSource` (HTTP plus cache) and
//! persists the `TrustedTree` each lookup returns.

pub mod note;
pub mod tlog;
pub mod verifier;

pub use note::{NoteError, VerifiedNote, VerifierKey};
pub use tlog::Tree;
pub use verifier::{LookupResult, SourceError, SumdbSource, TrustedTree, Verifier, VerifyError};

/// The verifier key of sum.golang.org, defined once in `config` (its default `go.sumdb`).
pub use crate::config::SUM_GOLANG_ORG_KEY;
