//! Sources: where messages come from. Only this module talks MQTT.

mod acks;
mod client;
mod failure;
pub mod mqtt;
mod tls;
