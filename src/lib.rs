//! tdx
