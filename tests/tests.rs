//! Integration tests: one binary, one shared control plane per run.

mod support;
