//! Raw leaf functions (being written).
