//! The HTTP sink's pure parts: status classification, outcomes, reasons.

use super::*;

/// The verdict with the default `deadLetterOn`.
fn v(status: StatusCode, retry_after: Option<&str>) -> Verdict {
    verdict(status, retry_after, &[400, 413, 415, 422])
}

#[test]
fn statuses_are_classified_as_the_delivery_contract_says() {
    assert_eq!(v(StatusCode::OK, None), Verdict::Accepted);
    assert_eq!(v(StatusCode::ACCEPTED, None), Verdict::Accepted);
    assert_eq!(
        v(StatusCode::INTERNAL_SERVER_ERROR, None),
        Verdict::Retry(None)
    );
    assert_eq!(
        v(StatusCode::SERVICE_UNAVAILABLE, Some("7")),
        Verdict::Retry(Some(Duration::from_secs(7)))
    );
    assert_eq!(
        v(StatusCode::TOO_MANY_REQUESTS, Some(" 2 ")),
        Verdict::Retry(Some(Duration::from_secs(2)))
    );
    assert_eq!(
        v(
            StatusCode::TOO_MANY_REQUESTS,
            Some("Wed, 21 Oct 2015 07:28:00 GMT")
        ),
        Verdict::Retry(None),
        "an HTTP date falls back to the backoff"
    );
    assert_eq!(
        v(StatusCode::TOO_MANY_REQUESTS, Some("999999")),
        Verdict::Retry(Some(MAX_RETRY_AFTER))
    );
    assert_eq!(v(StatusCode::REQUEST_TIMEOUT, None), Verdict::Retry(None));
    assert_eq!(v(StatusCode::BAD_REQUEST, None), Verdict::Rejected);
    assert_eq!(v(StatusCode::UNPROCESSABLE_ENTITY, None), Verdict::Rejected);
    assert_eq!(v(StatusCode::NOT_FOUND, None), Verdict::Retry(None));
    for status in [401, 403, 407] {
        let status = StatusCode::from_u16(status).unwrap();
        assert_eq!(v(status, None), Verdict::Unauthorized, "{status}");
    }
    assert_eq!(v(StatusCode::CONFLICT, None), Verdict::Retry(None));
    // The list is the user's; credentials stay out of it whatever it says.
    assert_eq!(
        verdict(StatusCode::CONFLICT, None, &[409]),
        Verdict::Rejected
    );
    assert_eq!(
        verdict(StatusCode::BAD_REQUEST, None, &[]),
        Verdict::Retry(None)
    );
    assert_eq!(
        verdict(StatusCode::UNAUTHORIZED, None, &[401]),
        Verdict::Unauthorized
    );
}

#[test]
fn a_redirect_is_a_failed_attempt_never_a_delivery_or_a_rejection() {
    for status in [301, 302, 303, 307, 308, 300, 304] {
        let status = StatusCode::from_u16(status).unwrap();
        assert_eq!(v(status, None), Verdict::Retry(None), "{status}");
        assert_eq!(v(status, Some("5")), Verdict::Retry(None), "{status}");
    }
    let reason = redirect_reason(
        StatusCode::TEMPORARY_REDIRECT,
        Some("https://u:pw@elsewhere.example:8443/steal?token=abc"),
    );
    assert_eq!(
        reason,
        "307 Temporary Redirect to https://elsewhere.example:8443/steal: redirects are never followed"
    );
    assert!(redirect_reason(StatusCode::FOUND, None).contains("without a location"));
}

#[test]
fn responses_become_the_outcomes_the_delivery_contract_says() {
    let headers = |pairs: &[(&'static str, &str)]| {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    };
    let s = |t: &str| t.to_string();
    let secs = Duration::from_secs;
    let unavailable = |status, retry_after, reason: &str| Outcome::Unavailable {
        status,
        retry_after,
        reason: s(reason),
    };
    // (status, headers, body, outcome)
    let cases = [
        (200, headers(&[]), "", Outcome::Accepted),
        (204, headers(&[("retry-after", "5")]), "", Outcome::Accepted),
        (
            400,
            headers(&[]),
            "bad\nrecord",
            Outcome::Rejected {
                status: 400,
                reason: s("400 Bad Request: bad record"),
            },
        ),
        (
            422,
            headers(&[("retry-after", "5")]),
            "",
            Outcome::Rejected {
                status: 422,
                reason: s("422 Unprocessable Entity"),
            },
        ),
        (
            401,
            headers(&[]),
            "token expired",
            Outcome::Unauthorized {
                status: 401,
                reason: s("401 Unauthorized: token expired"),
            },
        ),
        (
            407,
            headers(&[]),
            "",
            Outcome::Unauthorized {
                status: 407,
                reason: s("407 Proxy Authentication Required"),
            },
        ),
        (
            503,
            headers(&[("retry-after", "7")]),
            "busy",
            unavailable(503, Some(secs(7)), "503 Service Unavailable: busy"),
        ),
        (
            429,
            headers(&[("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")]),
            "",
            unavailable(429, None, "429 Too Many Requests"),
        ),
        (
            404,
            headers(&[]),
            "",
            unavailable(404, None, "404 Not Found"),
        ),
        (
            307,
            headers(&[
                ("location", "https://u:pw@elsewhere.example/x?token=abc"),
                ("retry-after", "5"),
            ]),
            "",
            unavailable(
                307,
                None,
                "307 Temporary Redirect to https://elsewhere.example/x: redirects are never followed",
            ),
        ),
        (
            302,
            headers(&[]),
            "",
            unavailable(
                302,
                None,
                "302 Found without a location: redirects are never followed",
            ),
        ),
    ];
    for (status, headers, body, want) in cases {
        let status = StatusCode::from_u16(status).unwrap();
        assert_eq!(
            outcome(status, &headers, body, &[400, 413, 415, 422]),
            want,
            "{status}"
        );
    }
}

#[test]
fn only_a_failure_or_a_rejection_reads_the_body() {
    for (status, reads) in [
        (200, false),
        (204, false),
        (301, false),
        (307, false),
        (400, true),
        (401, true),
        (429, true),
        (500, true),
    ] {
        let status = StatusCode::from_u16(status).unwrap();
        assert_eq!(reads_body(status), reads, "{status}");
    }
}

#[test]
fn rejection_reasons_are_one_bounded_line() {
    let s = summary(
        StatusCode::BAD_REQUEST,
        &format!("bad\nrecord {}", "x".repeat(1000)),
    );
    assert!(s.starts_with("400 Bad Request: bad record"));
    assert!(!s.contains('\n'));
    assert!(s.len() < REASON_CHARS + 40);
    assert_eq!(summary(StatusCode::BAD_REQUEST, " "), "400 Bad Request");
}
