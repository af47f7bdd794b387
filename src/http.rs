//! `/metrics`, `/healthz`, `/readyz`. (Being built.)
