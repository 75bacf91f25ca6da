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
