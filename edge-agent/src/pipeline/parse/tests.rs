//! Table tests for every reason a payload is invalid, and property tests that nothing
//! from the wire panics the parser.

use super::*;
use proptest::prelude::*;

const NOW: i64 = 1_795_608_000_000;

fn format(value: &str, device: &str, timestamp: Option<&str>) -> PayloadFormat {
    PayloadFormat {
        value: value.into(),
        device: device.into(),
        timestamp: timestamp.map(Into::into),
        ..PayloadFormat::default()
    }
}

fn json_parser() -> PayloadParser {
    PayloadParser::new(&format("value", "device_id", Some("timestamp")), 1024)
}

fn topic_parser() -> PayloadParser {
    PayloadParser::new(&format("data.temp", "topic[1]", Some("ts")), 1024)
}

#[test]
fn reason_names_are_the_metric_labels() {
    let names: Vec<&str> = InvalidReason::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(
        names,
        [
            "not_json",
            "missing_value",
            "not_numeric",
            "not_finite",
            "too_large",
            "bad_timestamp",
            "missing_device",
            "bad_device"
        ]
    );
}

#[test]
fn a_json_object_is_read_with_the_paths() {
    let r = json_parser()
        .parse(
            "sensors/t1/temperature",
            br#"{"device_id":"t1","value":23.4,"timestamp":1795608000.123}"#,
            NOW,
        )
        .unwrap();
    assert_eq!(
        r,
        Reading {
            device: "t1".into(),
            topic: "sensors/t1/temperature".into(),
            value: 23.4,
            timestamp_ms: 1_795_608_000_123,
            received_ms: NOW,
        }
    );
}

#[test]
fn valid_payloads() {
    // (parser, topic, payload, device, value, timestamp_ms)
    let json = json_parser();
    let topic = topic_parser();
    let indexed = PayloadParser::new(&format("r.1.v", "meta.id", None), 1024);
    let cases: &[(&PayloadParser, &str, &str, &str, f64, i64)] = &[
        (&json, "a", r#"{"device_id":"d","value":1}"#, "d", 1.0, NOW),
        (
            &json,
            "a",
            r#"{"device_id":17,"value":"2.5"}"#,
            "17",
            2.5,
            NOW,
        ),
        (
            &json,
            "a",
            r#"{"device_id":"d","value":-3e2,"timestamp":null}"#,
            "d",
            -300.0,
            NOW,
        ),
        (
            &json,
            "a",
            r#"{"device_id":"d","value":1,"timestamp":1795608000123}"#,
            "d",
            1.0,
            1_795_608_000_123,
        ),
        (
            &json,
            "a",
            r#"{"device_id":"d","value":1,"timestamp":"1795608000"}"#,
            "d",
            1.0,
            1_795_608_000_000,
        ),
        (
            &json,
            "a",
            r#"{"device_id":"d","value":1,"timestamp":"2026-11-25T12:00:00.123Z"}"#,
            "d",
            1.0,
            1_795_608_000_123,
        ),
        (
            &json,
            "a",
            r#"{"device_id":"d","value":1,"timestamp":"2026-11-25T13:00:00+01:00"}"#,
            "d",
            1.0,
            1_795_608_000_000,
        ),
        (
            &topic,
            "sensors/t9/temp",
            r#"{"data":{"temp":4.5},"ts":1795608000}"#,
            "t9",
            4.5,
            1_795_608_000_000,
        ),
        (&topic, "sensors/t9/temp", "23.4", "t9", 23.4, NOW),
        (&topic, "sensors/t9/temp", " 23.4\n", "t9", 23.4, NOW),
        (&topic, "sensors/t9/temp", "\"7\"", "t9", 7.0, NOW),
        (
            &indexed,
            "x",
            r#"{"meta":{"id":"m"},"r":[{"v":1},{"v":2}]}"#,
            "m",
            2.0,
            NOW,
        ),
    ];
    for (parser, t, payload, device, value, ts) in cases {
        let r = parser
            .parse(t, payload.as_bytes(), NOW)
            .unwrap_or_else(|e| panic!("{payload}: {e}"));
        assert_eq!(
            (r.device.as_str(), r.value, r.timestamp_ms),
            (*device, *value, *ts),
            "{payload}"
        );
        assert_eq!((r.topic.as_str(), r.received_ms), (*t, NOW));
    }
}

#[test]
fn every_reason_is_reported() {
    let json = json_parser();
    let topic = topic_parser();
    let big = format!(
        r#"{{"device_id":"d","value":1,"pad":"{}"}}"#,
        "x".repeat(2000)
    );
    let cases: &[(&PayloadParser, &str, &str, InvalidReason)] = &[
        (&json, "a", "{not json", InvalidReason::NotJson),
        (&json, "a", "", InvalidReason::NotJson),
        (&json, "a", "hello", InvalidReason::NotJson),
        (
            &json,
            "a",
            r#"{"device_id":"d"}"#,
            InvalidReason::MissingValue,
        ),
        (
            &json,
            "a",
            r#"{"device_id":"d","value":null}"#,
            InvalidReason::MissingValue,
        ),
        (
            &json,
            "a",
            r#"{"device_id":"d","value":"warm"}"#,
            InvalidReason::NotNumeric,
        ),
        (
            &json,
            "a",
            r#"{"device_id":"d","value":true}"#,
            InvalidReason::NotNumeric,
        ),
        (
            &json,
            "a",
            r#"{"device_id":"d","value":{"x":1}}"#,
            InvalidReason::NotNumeric,
        ),
        (
            &json,
            "a",
            r#"{"device_id":"d","value":[1]}"#,
            InvalidReason::NotNumeric,
        ),
        (&json, "a", "[1,2]", InvalidReason::NotNumeric),
        (
            &json,
            "a",
            r#"{"device_id":"d","value":"NaN"}"#,
            InvalidReason::NotFinite,
        ),
        (
            &json,
            "a",
            r#"{"device_id":"d","value":"-inf"}"#,
            InvalidReason::NotFinite,
        ),
        (&topic, "s/d/t", "nan", InvalidReason::NotFinite),
        (&topic, "s/d/t", "inf", InvalidReason::NotFinite),
        (&json, "a", big.as_str(), InvalidReason::TooLarge),
        (
            &json,
            "a",
            r#"{"device_id":"d","value":1,"timestamp":"yesterday"}"#,
            InvalidReason::BadTimestamp,
        ),
        (
            &json,
            "a",
            r#"{"device_id":"d","value":1,"timestamp":-5}"#,
            InvalidReason::BadTimestamp,
        ),
        (
            &json,
            "a",
            r#"{"device_id":"d","value":1,"timestamp":1e300}"#,
            InvalidReason::BadTimestamp,
        ),
        (
            &json,
            "a",
            r#"{"device_id":"d","value":1,"timestamp":true}"#,
            InvalidReason::BadTimestamp,
        ),
        (
            &json,
            "a",
            r#"{"device_id":"d","value":1,"timestamp":"2026-13-01T00:00:00Z"}"#,
            InvalidReason::BadTimestamp,
        ),
        (&json, "a", r#"{"value":1}"#, InvalidReason::MissingDevice),
        (
            &json,
            "a",
            r#"{"device_id":"","value":1}"#,
            InvalidReason::MissingDevice,
        ),
        (
            &json,
            "a",
            r#"{"device_id":{"id":1},"value":1}"#,
            InvalidReason::MissingDevice,
        ),
        (&json, "a", "23.4", InvalidReason::MissingDevice),
        (
            &topic,
            "sensors",
            r#"{"data":{"temp":1}}"#,
            InvalidReason::MissingDevice,
        ),
        (&topic, "sensors//t", "1", InvalidReason::MissingDevice),
    ];
    for (parser, t, payload, reason) in cases {
        assert_eq!(
            parser.parse(t, payload.as_bytes(), NOW),
            Err(*reason),
            "{payload}"
        );
    }
    assert!(json.parse("a", &[0xff, 0xfe, b'1'], NOW) == Err(InvalidReason::NotJson));
}

#[test]
fn size_limit_is_checked_before_parsing_and_is_inclusive() {
    let parser = PayloadParser::new(&format("value", "topic[0]", None), 4);
    assert!(parser.parse("d", b"1234", NOW).is_ok());
    assert_eq!(
        parser.parse("d", b"12345", NOW),
        Err(InvalidReason::TooLarge)
    );
    assert_eq!(
        parser.parse("d", b"{{{{{", NOW),
        Err(InvalidReason::TooLarge)
    );
}

#[test]
fn device_ids_follow_the_rule_wherever_they_come_from() {
    let long = "d".repeat(MAX_DEVICE_ID_BYTES);
    let too_long = "d".repeat(MAX_DEVICE_ID_BYTES + 1);
    let cases: [(&str, Result<(), InvalidReason>); 14] = [
        ("press-1", Ok(())),
        ("Kühlraum_3.a:b@c", Ok(())),
        (long.as_str(), Ok(())),
        ("", Err(InvalidReason::MissingDevice)),
        (too_long.as_str(), Err(InvalidReason::BadDevice)),
        ("a/b", Err(InvalidReason::BadDevice)),
        ("a+", Err(InvalidReason::BadDevice)),
        ("#", Err(InvalidReason::BadDevice)),
        ("a b", Err(InvalidReason::BadDevice)),
        ("a\u{0}", Err(InvalidReason::BadDevice)),
        ("a\u{1b}[2J", Err(InvalidReason::BadDevice)),
        ("a\u{85}", Err(InvalidReason::BadDevice)),
        ("a\u{202e}b", Err(InvalidReason::BadDevice)),
        ("\u{feff}a", Err(InvalidReason::BadDevice)),
    ];
    for (id, want) in cases {
        assert_eq!(check_device_id(id), want, "{id:?}");
        let payload = serde_json::json!({"device_id": id, "value": 1}).to_string();
        let parsed = json_parser()
            .parse("t", payload.as_bytes(), NOW)
            .map(|_| ());
        assert_eq!(parsed, want, "payload device {id:?}");
    }
    // A topic segment is held to the same rule (the broker allows control characters).
    assert_eq!(
        topic_parser().parse("s/a\u{7}b/t", b"1", NOW),
        Err(InvalidReason::BadDevice)
    );
    assert_eq!(
        topic_parser().parse("s//t", b"1", NOW),
        Err(InvalidReason::MissingDevice)
    );
}

#[test]
fn seconds_and_milliseconds_are_told_apart() {
    assert_eq!(unix_ms(99_999_999_999.0), Ok(99_999_999_999_000));
    assert_eq!(unix_ms(100_000_000_000.0), Ok(100_000_000_000));
    assert_eq!(unix_ms(1.5), Ok(1500));
    assert_eq!(unix_ms(0.0), Ok(0));
    assert_eq!(
        unix_ms(MAX_TIMESTAMP_MS + 1.0),
        Err(InvalidReason::BadTimestamp)
    );
    assert_eq!(unix_ms(f64::NAN), Err(InvalidReason::BadTimestamp));
}

/// JSON documents made of the keys the parsers look for, so generated payloads
/// reach every branch, not only `not_json`.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<f64>()
            .prop_map(|x| serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)),
        any::<i64>().prop_map(Value::from),
        "[0-9a-zT:.+\\-]{0,30}".prop_map(Value::String),
        prop_oneof![
            Just("NaN"),
            Just("inf"),
            Just("2026-11-25T12:00:00Z"),
            Just("1e400")
        ]
        .prop_map(|s| Value::String(s.into())),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("value".to_string()),
                    Just("device_id".to_string()),
                    Just("timestamp".to_string()),
                    Just("data".to_string()),
                    Just("temp".to_string()),
                    Just("ts".to_string()),
                    "[a-z0-9]{1,3}",
                ],
                inner,
                0..5
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(20_000))]

    #[test]
    fn arbitrary_bytes_never_panic(
        payload in prop::collection::vec(any::<u8>(), 0..256),
        topic in any::<String>(),
        received_ms in any::<i64>(),
    ) {
        for parser in [json_parser(), topic_parser()] {
            if let Ok(r) = parser.parse(&topic, &payload, received_ms) {
                prop_assert!(r.value.is_finite());
                prop_assert!(check_device_id(&r.device).is_ok());
            }
        }
    }

}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(5_000))]

    #[test]
    fn arbitrary_json_never_panics(doc in json_value(), topic in "[a-z0-9/]{0,20}") {
        let payload = serde_json::to_vec(&doc).unwrap();
        for parser in [json_parser(), topic_parser(), PayloadParser::new(&format("0.1", "0", Some("data.ts")), 4096)] {
            if let Ok(r) = parser.parse(&topic, &payload, NOW) {
                prop_assert!(r.value.is_finite());
                prop_assert!(!r.device.is_empty());
                prop_assert!(r.timestamp_ms <= MAX_TIMESTAMP_MS as i64);
            }
        }
    }

}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(5_000))]

    /// Whatever a sender puts in a device id, an accepted one renders into one level of a
    /// valid topic name under the template's prefix.
    #[test]
    fn accepted_device_ids_stay_one_topic_level(id in "\\PC{0,8}|.{0,200}|[\\x00-\\x7f]{0,140}") {
        let payload = serde_json::json!({"device_id": id, "value": 1}).to_string();
        let parser = PayloadParser::new(&format("value", "device_id", None), 1 << 20);
        if let Ok(r) = parser.parse("t", payload.as_bytes(), NOW) {
            let topic = crate::pipeline::actions::render_topic("alerts/{device}/state", &r.device, "ns/p", "n");
            prop_assert!(crate::pipeline::actions::check_topic(&topic).is_ok(), "{topic:?}");
            prop_assert_eq!(topic.split('/').count(), 3);
            prop_assert!(r.device.len() <= MAX_DEVICE_ID_BYTES);
        }
    }
}

proptest! {
    #[test]
    fn well_formed_readings_round_trip(
        device in "[a-zA-Z0-9_-]{1,16}",
        value in -1e12f64..1e12,
        ts_ms in 100_000_000_000i64..4_000_000_000_000,
    ) {
        let payload = serde_json::json!({"device_id": device, "value": value, "timestamp": ts_ms});
        let r = json_parser().parse("t", payload.to_string().as_bytes(), NOW).unwrap();
        prop_assert_eq!(r.device, device);
        prop_assert_eq!(r.value, value);
        prop_assert_eq!(r.timestamp_ms, ts_ms);
    }
}
