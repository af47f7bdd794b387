//! Upgrade providers. (Being built.)
