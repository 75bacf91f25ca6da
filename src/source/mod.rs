//! Sources: where messages come from. Only this module talks MQTT.

pub mod mqtt;
