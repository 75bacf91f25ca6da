//! The one integration-test binary of urbanflux.
//!
//! `harness` starts real services on free loopback ports (mosquitto, VictoriaMetrics, the daemon
//! itself; InfluxDB 1.x for the dashboards), loads the fixtures of `tests/fixtures/` and compares
//! what comes out with what the fixtures expect. `pipeline`, `faults` and `dashboards` hold the
//! tests: each reads as the behaviour it guards, and each owns its broker, store, ports,
//! temporary folders and MQTT client id, so they run in parallel.

mod dashboards;
mod devices;
mod disk;
mod faults;
mod harness;
mod hostile;
mod influx3;
mod mqtt5;
mod normalisation;
mod operations;
mod pipeline;
mod real_payloads;
mod scale;
mod sinks;
mod telemetry;
mod tls;
