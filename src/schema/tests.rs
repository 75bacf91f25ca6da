//! The schema's tables and the point builder.

use super::*;

#[test]
fn the_city_list_and_the_city_type_agree() {
    let names: Vec<&str> = City::ALL.iter().map(|c| c.as_str()).collect();
    assert_eq!(names, CITIES);
    assert_eq!(
        City::parse("sf").map(City::zone),
        Some(chrono_tz::America::Los_Angeles)
    );
    assert_eq!(City::parse("lyon"), None);
}

#[test]
fn rounding_is_half_away_from_zero_and_survives_float_error() {
    assert_eq!(round_to(0.1247, 4), 0.1247);
    assert_eq!(round_to(2.5, 0), 3.0);
    assert_eq!(round_to(-2.5, 0), -3.0);
    assert_eq!(round_to(3495.884568, 4), 3495.8846);
    assert_eq!(round_to(1.00005, 4), 1.0001);
}

#[test]
fn an_integer_field_takes_the_nearest_integer_never_a_float() {
    let mut p = PointBuilder::new(measurement("traffic").unwrap());
    p.num("count", 641.6).unwrap();
    assert_eq!(p.fields[0].1, FieldValue::Int(642));
}

#[test]
fn a_ratio_above_one_is_out_of_range() {
    let mut p = PointBuilder::new(measurement("waste_container").unwrap());
    let err = p.num("fill_ratio", 1.37).unwrap_err();
    assert_eq!(err.code, RejectCode::OutOfRange);
    assert!(err.detail.contains("fill_ratio"));
}

#[test]
fn occupied_above_operational_is_inconsistent() {
    let mut p = PointBuilder::new(measurement("parking").unwrap());
    p.tag("city", "sf")
        .tag("domain", "transport")
        .tag("kind", "onstreet_block")
        .tag("source", "sfpark")
        .tag("sensor_id", "bfid-1");
    p.num("spaces_occupied", 12.0).unwrap();
    assert_eq!(
        p.num("spaces_operational", 8.0).unwrap_err().code,
        RejectCode::InconsistentCounts
    );
}

#[test]
fn a_value_that_overflows_once_converted_is_out_of_range_never_inf() {
    let mut p = PointBuilder::new(measurement("energy").unwrap());
    // 1e308 W read into a kWh-scaled field: scaling for the decimals overflows.
    let err = p.num("active_power_w", 1e308).unwrap_err();
    assert_eq!(err.code, RejectCode::OutOfRange, "{}", err.detail);
    let err = p.num("active_power_w", f64::INFINITY).unwrap_err();
    assert_eq!(err.code, RejectCode::OutOfRange);
    assert_eq!(
        p.num("active_power_w", f64::NAN).unwrap_err().code,
        RejectCode::MalformedPayload
    );
    let mut t = PointBuilder::new(measurement("traffic").unwrap());
    assert_eq!(
        t.num("count", 1e19).unwrap_err().code,
        RejectCode::OutOfRange
    );
}

#[test]
fn control_characters_in_a_string_field_are_refused() {
    let mut p = PointBuilder::new(measurement("transit").unwrap());
    let err = p.string("trip_id", "38R\u{0}\n").unwrap_err();
    assert_eq!(err.code, RejectCode::MalformedPayload);
    assert!(err.detail.contains("control character"), "{}", err.detail);
    assert!(p.string("trip_id", "38R-1107-0830").is_ok());
}

fn transit_with(route_id: &str) -> Result<Reading, Reject> {
    let mut p = PointBuilder::new(measurement("transit").unwrap());
    p.tag("city", "sf")
        .tag("domain", "transport")
        .tag("kind", "bus")
        .tag("source", "gtfs_rt")
        .tag("sensor_id", "muni-1")
        .tag("route_id", route_id);
    p.num("speed_kmh", 12.0).unwrap();
    p.finish(1_741_963_290_000)
}

#[test]
fn free_text_never_becomes_a_tag() {
    assert!(transit_with("STIF:Line::C01742:").is_ok());
    for bad in ["38 R", "a\\", "x,y=z", "é", &"r".repeat(129)] {
        let err = transit_with(bad).unwrap_err();
        assert_eq!(err.code, RejectCode::MalformedPayload, "{bad:?}");
        assert!(err.detail.starts_with("tag route_id:"), "{}", err.detail);
    }
    let mut w = PointBuilder::new(measurement("waste_container").unwrap());
    w.tag("city", "paris")
        .tag("domain", "waste")
        .tag("kind", "column")
        .tag("source", "senml")
        .tag("sensor_id", "trilib-1")
        .tag("waste_stream", "glass")
        .tag("district", "Paris 12e");
    w.num("fill_ratio", 0.5).unwrap();
    let err = w.finish(1_741_963_290_000).unwrap_err();
    assert!(err.detail.starts_with("tag district:"), "{}", err.detail);
}
