//! The one integration-test binary of urbanflux.
//!
//! `harness` starts real services on free loopback ports (mosquitto, VictoriaMetrics, the daemon
//! itself), loads the fixtures of `tests/fixtures/` and compares what comes out with what the
//! fixtures expect. `pipeline` holds the tests: each reads as the behaviour it guards, and each
//! owns its broker, store, ports, temporary folders and MQTT client id, so they run in parallel.

mod harness;
mod normalisation;
mod pipeline;
