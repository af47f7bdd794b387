//! Prometheus metrics. (Being built.)
