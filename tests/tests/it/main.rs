//! One integration-test binary that drives the real binaries (see `chain_tests` helpers).
mod bad_input;
mod bundle;
mod calibration;
mod chain;
mod compare;
mod ensemble;
mod fixture;
mod froc;
mod import;
mod linking;
mod prepare;
mod regression;
mod scoring;
mod setup;
mod shard;
mod sweep;
mod weights;
