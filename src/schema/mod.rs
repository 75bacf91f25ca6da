//! The canonical model of docs/schema.md section 2 as data: measurements, their domains and kinds,
//! field types with decimals, and ranges. `PointBuilder` is the only way normalisers make a
//! `Reading`, so a field's type can never drift between writes.

mod point;

pub use point::PointBuilder;

use crate::model::{FieldValue, Reading, Reject, RejectCode, Warning, WarningCode};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FieldType {
    Int,
    /// Float rounded half away from zero to this many decimals.
    Float(u8),
    Bool,
    Str,
}

#[derive(Debug)]
pub struct FieldSpec {
    pub name: &'static str,
    pub ty: FieldType,
    /// Inclusive physical range; a value outside is `out_of_range`.
    pub range: Option<(f64, f64)>,
}

#[derive(Debug)]
pub struct MeasurementSpec {
    pub name: &'static str,
    pub domain: &'static str,
    pub kinds: &'static [&'static str],
    pub fields: &'static [FieldSpec],
}

const fn f(name: &'static str, decimals: u8) -> FieldSpec {
    FieldSpec {
        name,
        ty: FieldType::Float(decimals),
        range: None,
    }
}
const fn fr(name: &'static str, decimals: u8, lo: f64, hi: f64) -> FieldSpec {
    FieldSpec {
        name,
        ty: FieldType::Float(decimals),
        range: Some((lo, hi)),
    }
}
/// Counts are integers >= 0.
const fn count(name: &'static str) -> FieldSpec {
    FieldSpec {
        name,
        ty: FieldType::Int,
        range: Some((0.0, f64::MAX)),
    }
}
const fn int(name: &'static str) -> FieldSpec {
    FieldSpec {
        name,
        ty: FieldType::Int,
        range: None,
    }
}
const fn b(name: &'static str) -> FieldSpec {
    FieldSpec {
        name,
        ty: FieldType::Bool,
        range: None,
    }
}
const fn s(name: &'static str) -> FieldSpec {
    FieldSpec {
        name,
        ty: FieldType::Str,
        range: None,
    }
}

const RATIO: (f64, f64) = (0.0, 1.0);
const TEMP: (f64, f64) = (-50.0, 150.0);

/// Device-health fields allowed on every measurement.
pub static HEALTH_FIELDS: &[FieldSpec] = &[
    fr("battery_ratio", 4, RATIO.0, RATIO.1),
    f("battery_v", 2),
    f("rssi_dbm", 1),
    f("snr_db", 1),
];

pub static MEASUREMENTS: &[MeasurementSpec] = &[
    MeasurementSpec {
        name: "traffic",
        domain: "transport",
        kinds: &["road_loop", "freeway_vds", "bike_counter"],
        fields: &[
            count("count"),
            fr("flow_per_h", 1, 0.0, f64::MAX),
            fr("occupancy_ratio", 4, RATIO.0, RATIO.1),
            fr("speed_kmh", 2, 0.0, 250.0),
            count("period_s"),
            s("traffic_state"),
            s("road_status"),
        ],
    },
    MeasurementSpec {
        name: "bikeshare",
        domain: "transport",
        kinds: &["dock_station"],
        fields: &[
            count("bikes_available"),
            count("mechanical_available"),
            count("ebikes_available"),
            count("bikes_disabled"),
            count("docks_available"),
            count("docks_disabled"),
            count("capacity"),
            b("is_installed"),
            b("is_renting"),
            b("is_returning"),
        ],
    },
    MeasurementSpec {
        name: "parking",
        domain: "transport",
        kinds: &["onstreet_block", "garage", "spot"],
        fields: &[
            count("spaces_operational"),
            count("spaces_occupied"),
            count("spaces_available"),
            fr("occupancy_ratio", 4, RATIO.0, RATIO.1),
            b("occupied"),
        ],
    },
    MeasurementSpec {
        name: "transit",
        domain: "transport",
        kinds: &["bus", "tram", "light_rail", "metro", "cable_car"],
        fields: &[
            fr("lat", 6, -90.0, 90.0),
            fr("lon", 6, -180.0, 180.0),
            fr("bearing_deg", 1, 0.0, 360.0),
            fr("speed_kmh", 2, 0.0, 250.0),
            int("delay_s"),
            s("trip_id"),
            s("stop_id"),
        ],
    },
    MeasurementSpec {
        name: "waste_container",
        domain: "waste",
        kinds: &["column", "trilib_module", "bin", "compactor"],
        fields: &[
            fr("fill_ratio", 4, RATIO.0, RATIO.1),
            fr("distance_m", 3, 0.0, f64::MAX),
            fr("temperature_c", 2, TEMP.0, TEMP.1),
            count("compaction_count"),
            b("tilted"),
            b("lid_open"),
        ],
    },
    MeasurementSpec {
        name: "waste_collection",
        domain: "waste",
        kinds: &["truck_lift"],
        fields: &[
            fr("weight_kg", 2, 0.0, f64::MAX),
            fr("lat", 6, -90.0, 90.0),
            fr("lon", 6, -180.0, 180.0),
            s("event"),
            s("container_id"),
        ],
    },
    MeasurementSpec {
        name: "water",
        domain: "networks",
        kinds: &["meter", "quality_station"],
        fields: &[
            fr("volume_m3", 4, 0.0, f64::MAX),
            f("volume_delta_m3", 4),
            count("period_s"),
            f("flow_m3_h", 3),
            fr("pressure_bar", 3, 0.0, 25.0),
            fr("temperature_c", 2, TEMP.0, TEMP.1),
            fr("ph", 2, 0.0, 14.0),
            fr("conductivity_us_cm", 1, 0.0, f64::MAX),
            fr("turbidity_ntu", 3, 0.0, f64::MAX),
            fr("chlorine_mg_l", 3, 0.0, f64::MAX),
            b("leak_alarm"),
            b("tamper_alarm"),
            b("backflow_alarm"),
        ],
    },
    MeasurementSpec {
        name: "energy",
        domain: "networks",
        kinds: &["electric_meter", "heating_substation", "cooling_substation"],
        fields: &[
            f("active_power_w", 1),
            fr("energy_kwh", 3, 0.0, f64::MAX),
            fr("voltage_v", 1, 0.0, f64::MAX),
            f("current_a", 3),
            fr("power_factor", 3, -1.0, 1.0),
            fr("frequency_hz", 3, 0.0, f64::MAX),
            f("thermal_power_kw", 2),
            fr("thermal_energy_kwh", 3, 0.0, f64::MAX),
            fr("supply_temperature_c", 2, TEMP.0, 250.0),
            fr("return_temperature_c", 2, TEMP.0, TEMP.1),
            f("flow_m3_h", 3),
        ],
    },
    MeasurementSpec {
        name: "streetlight",
        domain: "networks",
        kinds: &["lamp", "cabinet"],
        fields: &[
            b("lamp_on"),
            fr("dimming_ratio", 4, RATIO.0, RATIO.1),
            fr("power_w", 1, 0.0, f64::MAX),
            fr("energy_kwh", 3, 0.0, f64::MAX),
            fr("voltage_v", 1, 0.0, f64::MAX),
            f("current_a", 3),
            fr("power_factor", 3, -1.0, 1.0),
            b("fault"),
        ],
    },
    MeasurementSpec {
        name: "telecom",
        domain: "networks",
        kinds: &["wifi_hotspot"],
        fields: &[
            count("clients"),
            count("sessions"),
            count("rx_bytes"),
            count("tx_bytes"),
        ],
    },
];

/// The cities of the programme, with the zone their naive local times are read in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum City {
    Paris,
    Sf,
}

impl City {
    pub const ALL: [City; 2] = [City::Paris, City::Sf];

    /// The `city` tag value.
    pub fn as_str(self) -> &'static str {
        match self {
            City::Paris => "paris",
            City::Sf => "sf",
        }
    }

    pub fn parse(tag: &str) -> Option<City> {
        City::ALL.into_iter().find(|c| c.as_str() == tag)
    }

    /// A generous box (lat, lon ranges): Ile-de-France for Paris, the Bay Area for San
    /// Francisco. A valid position outside is accepted with a warning (docs/schema.md 2.5).
    pub fn bounds(self) -> (Span, Span) {
        match self {
            City::Paris => ((48.0, 49.3), (1.4, 3.6)),
            City::Sf => ((37.0, 38.4), (-123.2, -121.5)),
        }
    }

    /// docs/schema.md 2.4: Paris feeds are in Europe/Paris, San Francisco feeds in America/Los_Angeles.
    pub fn zone(self) -> chrono_tz::Tz {
        match self {
            City::Paris => chrono_tz::Europe::Paris,
            City::Sf => chrono_tz::America::Los_Angeles,
        }
    }
}

/// The `city` tag values, for messages that list them.
pub const CITIES: &[&str] = &["paris", "sf"];

/// The `domain` tag values (docs/schema.md 2.2).
pub const DOMAINS: &[&str] = &["networks", "transport", "waste"];

/// The `source` tag values: the parser families of docs/schema.md 2.3.
pub const SOURCES: &[&str] = &[
    "opendata_paris",
    "prim_siri",
    "senml",
    "lp",
    "plain",
    "chirpstack",
    "tts",
    "pems",
    "sfpark",
    "gbfs",
    "gtfs_rt",
    "sfpuc_ami",
    "vendor_webhook",
    "recology",
    "thingpark",
];

pub fn measurement(name: &str) -> Option<&'static MeasurementSpec> {
    MEASUREMENTS.iter().find(|m| m.name == name)
}

/// A field of any measurement (or a device-health field), for rules whose kind comes from the
/// payload: the same field name has the same type and unit in every measurement.
pub fn any_field(name: &str) -> Option<&'static FieldSpec> {
    MEASUREMENTS
        .iter()
        .find_map(|m| m.fields.iter().find(|f| f.name == name))
        .or_else(|| HEALTH_FIELDS.iter().find(|f| f.name == name))
}

/// Kinds are unique across measurements, so a kind names its measurement and domain.
pub fn measurement_of_kind(kind: &str) -> Option<&'static MeasurementSpec> {
    MEASUREMENTS.iter().find(|m| m.kinds.contains(&kind))
}

impl MeasurementSpec {
    pub fn field(&self, name: &str) -> Option<&'static FieldSpec> {
        self.fields
            .iter()
            .chain(HEALTH_FIELDS.iter())
            .find(|f| f.name == name)
    }
}

/// A sensor id is `<ns>-<native id>` with characters `[A-Za-z0-9._:@/-]`, at most 128.
/// Tags every point carries (docs/schema.md 2.3); `sensor_id` is checked on its own.
pub const ALWAYS_TAGS: [&str; 4] = ["city", "domain", "kind", "source"];

/// Tags a measurement requires besides [`ALWAYS_TAGS`] and `sensor_id` (docs/schema.md 2.3).
pub fn required_tags(spec: &MeasurementSpec) -> &'static [&'static str] {
    match (spec.domain, spec.name) {
        ("waste", _) => &["waste_stream"],
        (_, "traffic") => &["vehicle_class"],
        (_, "transit") => &["route_id"],
        _ => &[],
    }
}

/// An inclusive range of degrees.
pub type Span = (f64, f64);

/// The box of `city` (lat, lon ranges), if it is a city of the programme.
pub fn city_box(city: &str) -> Option<(Span, Span)> {
    City::parse(city).map(City::bounds)
}

/// A warning when the reading's position is outside the box of its city.
pub fn outside_city(r: &Reading) -> Option<Warning> {
    let num = |k: &str| match r.fields.iter().find(|(f, _)| *f == k)?.1 {
        FieldValue::Float(f) => Some(f),
        FieldValue::Int(i) => Some(i as f64),
        _ => None,
    };
    let city = r.tag("city")?;
    let ((lat_lo, lat_hi), (lon_lo, lon_hi)) = city_box(city)?;
    let (lat, lon) = (num("lat"), num("lon"));
    let out = lat.is_some_and(|v| !(lat_lo..=lat_hi).contains(&v))
        || lon.is_some_and(|v| !(lon_lo..=lon_hi).contains(&v));
    if !out {
        return None;
    }
    let show = |v: Option<f64>| v.map_or("-".to_string(), |v| v.to_string());
    Some(Warning {
        code: WarningCode::OutsideCity,
        city: city.to_string(),
        source: r.tag("source").unwrap_or_default().to_string(),
        detail: format!(
            "sensor {}: lat {}, lon {} is outside the box of {city} (lat {lat_lo}..{lat_hi}, lon {lon_lo}..{lon_hi}); kept",
            r.tag("sensor_id").unwrap_or_default(),
            show(lat),
            show(lon)
        ),
    })
}

/// The field a SenML record the rule does not name maps to by its unit (docs/schema.md 3):
/// `%EL` is the battery, `lat`/`lon` the position, and otherwise the only numeric field of the
/// measurement (device-health fields aside) whose quantity the unit converts into. Units of
/// counts, durations, angles and %RH (no canonical humidity) map to nothing: too ambiguous.
pub fn field_for_unit(spec: &MeasurementSpec, unit: &str) -> Option<&'static FieldSpec> {
    match unit {
        "%EL" => return spec.field("battery_ratio"),
        "lat" | "lon" => return spec.field(unit),
        "" | "1" | "count" | "%RH" | "EL" | "s" | "min" | "h" | "ms" | "deg" | "rad" | "dB"
        | "dBm" | "dBW" => return None,
        _ => {}
    }
    let mut found = spec.fields.iter().filter(|f| {
        matches!(f.ty, FieldType::Int | FieldType::Float(_))
            && !matches!(f.name, "lat" | "lon")
            && crate::units::is_known(f.name, unit)
    });
    match (found.next(), found.next()) {
        (Some(f), None) => Some(f),
        _ => None,
    }
}

/// The longest tag value written: a tag is an index key, not a text field.
pub const MAX_TAG_BYTES: usize = 128;

/// The values of the enumerated tags (docs/schema.md 2.3).
pub const WASTE_STREAMS: [&str; 7] = [
    "residual",
    "mixed_recycling",
    "glass",
    "organic",
    "paper",
    "textile",
    "other",
];
pub const VEHICLE_CLASSES: [&str; 2] = ["all", "bicycle"];

/// A tag value as the model allows it (docs/schema.md 2.3): the enumerations their values, the
/// district its code (INSEE `NNNNN` in Paris, `sdNN` in San Francisco), every other tag at most
/// [`MAX_TAG_BYTES`] of `[A-Za-z0-9._:@/-]`. Free text never becomes a series.
fn check_tag(key: &str, value: &str) -> Result<(), Reject> {
    let bad = |why: &str| {
        Err(Reject::new(
            RejectCode::MalformedPayload,
            format!("tag {key}: {value:?} {why}"),
        ))
    };
    if value.is_empty() {
        return Ok(());
    }
    match key {
        "waste_stream" if !WASTE_STREAMS.contains(&value) => {
            bad(&format!("is not one of {}", WASTE_STREAMS.join(", ")))
        }
        "vehicle_class" if !VEHICLE_CLASSES.contains(&value) => bad("is not all or bicycle"),
        "district"
            if !(value.len() == 5 && value.bytes().all(|b| b.is_ascii_digit())
                || value.len() == 4
                    && value.starts_with("sd")
                    && value[2..].bytes().all(|b| b.is_ascii_digit())) =>
        {
            bad("is not an INSEE code (75112) nor a supervisor district (sd06)")
        }
        _ if value.len() > MAX_TAG_BYTES => bad(&format!("is longer than {MAX_TAG_BYTES} bytes")),
        _ if !value
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"._:@/-".contains(&c)) =>
        {
            bad("has characters outside [A-Za-z0-9._:@/-]")
        }
        _ => Ok(()),
    }
}

pub fn valid_sensor_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"._:@/-".contains(&c))
}

/// Rounds half away from zero to `decimals` places (docs/schema.md section 4).
pub fn round_to(value: f64, decimals: u8) -> f64 {
    let scale = 10f64.powi(decimals as i32);
    // A few ulps of headroom so that a decimal tie stored as x.4999999 still rounds away from zero.
    (value * scale * (1.0 + 4.0 * f64::EPSILON)).round() / scale
}

#[cfg(test)]
mod tests;
