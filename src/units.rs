//! The unit registry: converts a value from a source unit to the canonical unit that a field's
//! name carries (`_c` is degrees Celsius, `_bar` bar, `_ratio` 0..1, ...). Exact constants from
//! docs/schema.md section 3.

use crate::model::{Reject, RejectCode};

/// Canonical quantities, named by the field-name suffix that carries them.
/// Longer suffixes first, so `_m3_h` wins over `_h` and `_kwh` over `_w`.
const SUFFIXES: &[(&str, Quantity)] = &[
    ("_m3_h", Quantity::Flow),
    ("_us_cm", Quantity::Conductivity),
    ("_mg_l", Quantity::MassConcentration),
    ("_ratio", Quantity::Ratio),
    ("_kmh", Quantity::Speed),
    ("_kwh", Quantity::Energy),
    ("_dbm", Quantity::Dbm),
    ("_deg", Quantity::Angle),
    ("_bar", Quantity::Pressure),
    ("_ntu", Quantity::Turbidity),
    ("_m3", Quantity::Volume),
    ("_kw", Quantity::PowerKw),
    ("_kg", Quantity::Mass),
    ("_hz", Quantity::Frequency),
    ("_db", Quantity::Db),
    ("_c", Quantity::Temperature),
    ("_w", Quantity::PowerW),
    ("_v", Quantity::Voltage),
    ("_a", Quantity::Current),
    ("_m", Quantity::Length),
    ("_s", Quantity::Duration),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quantity {
    Flow,
    Conductivity,
    MassConcentration,
    Ratio,
    Speed,
    Energy,
    Dbm,
    Angle,
    Pressure,
    Turbidity,
    Volume,
    PowerKw,
    PowerW,
    Mass,
    Frequency,
    Db,
    Temperature,
    Voltage,
    Current,
    Length,
    Duration,
    Ph,
    Count,
}

/// (quantity, unit spellings, factor, offset): canonical = value * factor + offset.
const UNITS: &[(Quantity, &[&str], f64, f64)] = &[
    (Quantity::Temperature, &["Cel", "degC", "°C", "C"], 1.0, 0.0),
    (Quantity::Temperature, &["K"], 1.0, -273.15),
    (
        Quantity::Temperature,
        &["degF", "°F", "F"],
        5.0 / 9.0,
        -32.0 * 5.0 / 9.0,
    ),
    (Quantity::Pressure, &["bar"], 1.0, 0.0),
    (Quantity::Pressure, &["Pa"], 1e-5, 0.0),
    (Quantity::Pressure, &["hPa", "mbar"], 1e-3, 0.0),
    (Quantity::Pressure, &["kPa"], 1e-2, 0.0),
    (Quantity::Pressure, &["psi"], 0.0689475729316836, 0.0),
    (Quantity::Conductivity, &["uS/cm", "µS/cm"], 1.0, 0.0),
    (Quantity::Conductivity, &["S/m"], 1e4, 0.0),
    (Quantity::Conductivity, &["mS/cm"], 1e3, 0.0),
    (
        Quantity::MassConcentration,
        &["mg/l", "mg/L", "g/m3"],
        1.0,
        0.0,
    ),
    (Quantity::MassConcentration, &["kg/m3"], 1e3, 0.0),
    (Quantity::Ratio, &["/", "1", "ratio"], 1.0, 0.0),
    (Quantity::Ratio, &["/100", "%", "%EL", "%RH"], 0.01, 0.0),
    (Quantity::Speed, &["km/h", "kmh"], 1.0, 0.0),
    (Quantity::Speed, &["m/s"], 3.6, 0.0),
    (Quantity::Speed, &["mph", "mi/h"], 1.609344, 0.0),
    (Quantity::Speed, &["kn", "kt"], 1.852, 0.0),
    (Quantity::Energy, &["kWh"], 1.0, 0.0),
    (Quantity::Energy, &["Wh"], 1e-3, 0.0),
    (Quantity::Energy, &["MWh"], 1e3, 0.0),
    (Quantity::Energy, &["J"], 1.0 / 3.6e6, 0.0),
    (Quantity::Dbm, &["dBm", "dBW"], 1.0, 0.0),
    (Quantity::Db, &["dB"], 1.0, 0.0),
    (Quantity::Angle, &["deg", "°", "lat", "lon"], 1.0, 0.0),
    (Quantity::Turbidity, &["NTU", "FNU"], 1.0, 0.0),
    (Quantity::Volume, &["m3"], 1.0, 0.0),
    (Quantity::Volume, &["l", "L"], 1e-3, 0.0),
    (
        Quantity::Volume,
        &["gal", "GAL", "US gal"],
        0.003785411784,
        0.0,
    ),
    (Quantity::Volume, &["ft3"], 0.028316846592, 0.0),
    (Quantity::Volume, &["CCF", "HCF"], 2.8316846592, 0.0),
    (Quantity::Volume, &["acre-ft"], 1233.48183754752, 0.0),
    (Quantity::Flow, &["m3/h"], 1.0, 0.0),
    (Quantity::Flow, &["m3/s"], 3600.0, 0.0),
    (Quantity::Flow, &["l/s"], 3.6, 0.0),
    (Quantity::Flow, &["l/h", "L/h"], 1e-3, 0.0),
    (Quantity::Flow, &["gpm"], 0.227124707, 0.0),
    (Quantity::PowerW, &["W"], 1.0, 0.0),
    (Quantity::PowerW, &["kW"], 1e3, 0.0),
    (Quantity::PowerKw, &["kW"], 1.0, 0.0),
    (Quantity::PowerKw, &["W"], 1e-3, 0.0),
    (Quantity::PowerKw, &["MW"], 1e3, 0.0),
    (Quantity::Mass, &["kg"], 1.0, 0.0),
    (Quantity::Mass, &["g"], 1e-3, 0.0),
    (Quantity::Mass, &["lb"], 0.45359237, 0.0),
    (Quantity::Frequency, &["Hz"], 1.0, 0.0),
    (Quantity::Voltage, &["V"], 1.0, 0.0),
    (Quantity::Current, &["A"], 1.0, 0.0),
    (Quantity::Current, &["mA"], 1e-3, 0.0),
    (Quantity::Length, &["m"], 1.0, 0.0),
    (Quantity::Length, &["mm"], 1e-3, 0.0),
    (Quantity::Length, &["cm"], 1e-2, 0.0),
    (Quantity::Length, &["ft"], 0.3048, 0.0),
    (Quantity::Length, &["mi"], 1609.344, 0.0),
    (Quantity::Duration, &["s"], 1.0, 0.0),
    (Quantity::Duration, &["min"], 60.0, 0.0),
    (Quantity::Duration, &["h"], 3600.0, 0.0),
    (Quantity::Ph, &["pH"], 1.0, 0.0),
    (Quantity::Count, &["count", "1", ""], 1.0, 0.0),
];

/// Units registered for SenML: RFC 8428 section 12.1 and the RFC 8798 secondary units, plus
/// the few spellings gateways here already send (uS/cm, mS/cm, mg/l, bar, MWh, m3/h, l/h,
/// kg/m3). A pack with any other unit is refused: there is no SenML unit for degF, gallons or
/// mph. A registered unit that no canonical field takes is left out of the reading.
const SENML_UNITS: &[&str] = &[
    // RFC 8428
    "m", "kg", "g", "s", "A", "K", "cd", "mol", "Hz", "rad", "sr", "N", "Pa", "J", "W", "C", "V",
    "F", "Ohm", "S", "Wb", "T", "H", "Cel", "lm", "lx", "Bq", "Gy", "Sv", "kat", "m2", "m3", "l",
    "m/s", "m/s2", "m3/s", "l/s", "W/m2", "cd/m2", "bit", "bit/s", "lat", "lon", "pH", "dB", "dBW",
    "Bspl", "count", "/", "%", "%RH", "%EL", "EL", "1/s", "1/min", "beat/min", "beats", "S/m",
    // RFC 8798 secondary units
    "ms", "min", "h", "MHz", "kW", "kVA", "kvar", "Ah", "Wh", "kWh", "varh", "kvarh", "kVAh",
    "Wh/km", "KiB", "kB", "Mbit/s", "B/s", "MB/s", "mV", "mA", "dBm", "ug/m3", "mm/h", "m/h",
    "ppm", "/100", "/1000", "hPa", "mm", "cm", "km", "km/h", "gravity", "dps", "GiB", "GB",
    // spellings in use by our gateways
    "bar", "MWh", "m3/h", "l/h", "mS/cm", "uS/cm", "NTU", "kg/m3", "mg/l", "deg", "1",
];

pub fn is_senml_unit(unit: &str) -> bool {
    SENML_UNITS.contains(&unit)
}

fn quantity_of(field: &str) -> Quantity {
    match field {
        "ph" => return Quantity::Ph,
        "lat" | "lon" => return Quantity::Angle,
        _ => {}
    }
    SUFFIXES
        .iter()
        .find(|(suffix, _)| field.ends_with(suffix))
        .map(|(_, q)| *q)
        .unwrap_or(Quantity::Count)
}

/// Converts `value` in `unit` into the canonical unit of `field`.
pub fn convert(field: &str, unit: &str, value: f64) -> Result<f64, Reject> {
    let q = quantity_of(field);
    UNITS
        .iter()
        .find(|(uq, names, _, _)| *uq == q && names.contains(&unit))
        .map(|(_, _, factor, offset)| value * factor + offset)
        .ok_or_else(|| {
            Reject::new(
                RejectCode::UnsupportedUnit,
                format!("field {field}: unit {unit:?} is not a known unit for this quantity"),
            )
        })
}

/// True when `unit` converts into `field`'s canonical unit (for config validation).
pub fn is_known(field: &str, unit: &str) -> bool {
    convert(field, unit, 0.0).is_ok()
}

/// True when the registry knows `unit` for some quantity (an unknown unit is a config error).
pub fn is_unit(unit: &str) -> bool {
    UNITS.iter().any(|(_, names, _, _)| names.contains(&unit))
}

/// The units `field` accepts, for error messages and the README.
pub fn units_for(field: &str) -> Vec<&'static str> {
    let q = quantity_of(field);
    UNITS
        .iter()
        .filter(|(uq, _, _, _)| *uq == q)
        .flat_map(|(_, names, _, _)| names.iter().copied())
        .filter(|n| !n.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_use_the_exact_constants() {
        assert!(
            (convert("volume_m3", "CCF", 1234.56).unwrap() - 3_495.884_612_861_952).abs() < 1e-9
        );
        assert!((convert("temperature_c", "degF", 68.0).unwrap() - 20.0).abs() < 1e-12);
        assert!((convert("speed_kmh", "mph", 60.0).unwrap() - 96.56064).abs() < 1e-9);
        assert!((convert("pressure_bar", "Pa", 412500.0).unwrap() - 4.125).abs() < 1e-12);
        assert!((convert("conductivity_us_cm", "S/m", 0.0512).unwrap() - 512.0).abs() < 1e-9);
        assert!((convert("weight_kg", "lb", 100.0).unwrap() - 45.359237).abs() < 1e-12);
    }

    #[test]
    fn a_unit_of_the_wrong_quantity_is_unsupported() {
        let e = convert("temperature_c", "Pa", 1.0).unwrap_err();
        assert_eq!(e.code, RejectCode::UnsupportedUnit);
        assert!(e.detail.contains("temperature_c"));
        assert!(!is_senml_unit("degF"));
    }
}
