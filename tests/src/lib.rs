//! Shared helpers for Edgepipe's cross-component tests.
