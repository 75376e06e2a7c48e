//! Kubernetes resource quantities (`500m`, `1`, `256Mi`, `1.5Gi`, `2e3`) turned into a
//! number that can be compared, for the tenant policy's resource ceilings.
//!
//! A quantity is held in nano-units (CPU: nanocores; memory: nanobytes) as a `u128`,
//! rounded up, which is exact for everything Kubernetes itself can represent and large
//! enough for any quantity a node can have (64Ei is about 7.4e28 nano-units).

use std::fmt;

/// A non-negative quantity in nano-units (rounded up).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Amount(u128);

impl Amount {
    /// The amount in nano-units.
    pub fn nanos(self) -> u128 {
        self.0
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}n", self.0)
    }
}

/// Parses a Kubernetes quantity: `<number><suffix>` where the number is a decimal with an
/// optional `+` and fraction, and the suffix one of `Ki Mi Gi Ti Pi Ei`, `n u m k M G T
/// P E`, none, or an exponent `e<n>` / `E<n>`. Negative quantities are refused (no
/// resource can be negative).
pub fn parse_quantity(text: &str) -> Result<Amount, String> {
    let invalid = || format!("{text:?} is not a Kubernetes quantity (e.g. 500m, 1, 256Mi)");
    let s = text.trim();
    let s = s.strip_prefix('+').unwrap_or(s);
    if s.starts_with('-') {
        return Err(format!("{text:?} is negative"));
    }
    let number_len = s
        .bytes()
        .position(|b| !(b.is_ascii_digit() || b == b'.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(number_len);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
        return Err(invalid());
    }
    // value = digits * 10^(-fraction digits) * 2^binary * 10^decimal
    let (binary, decimal): (u32, i32) = match suffix {
        "Ki" => (10, 0),
        "Mi" => (20, 0),
        "Gi" => (30, 0),
        "Ti" => (40, 0),
        "Pi" => (50, 0),
        "Ei" => (60, 0),
        "n" => (0, -9),
        "u" => (0, -6),
        "m" => (0, -3),
        "" => (0, 0),
        "k" => (0, 3),
        "M" => (0, 6),
        "G" => (0, 9),
        "T" => (0, 12),
        "P" => (0, 15),
        "E" => (0, 18),
        other => {
            let exponent = other
                .strip_prefix(['e', 'E'])
                .and_then(|e| e.parse::<i32>().ok())
                .filter(|e| e.abs() <= 30)
                .ok_or_else(invalid)?;
            (0, exponent)
        }
    };
    let too_large = || format!("{text:?} is too large");
    let digits: String = format!("{whole}{fraction}");
    if digits.len() > 30 {
        return Err(too_large());
    }
    let mut value: u128 = if digits.is_empty() {
        0
    } else {
        digits.parse().map_err(|_| invalid())?
    };
    value = value.checked_mul(1u128 << binary).ok_or_else(too_large)?;
    let fraction_digits = i32::try_from(fraction.len()).map_err(|_| invalid())?;
    let exponent = decimal + 9 - fraction_digits;
    let power = |e: i32| 10u128.checked_pow(e.unsigned_abs());
    let nanos = if exponent >= 0 {
        value
            .checked_mul(power(exponent).ok_or_else(too_large)?)
            .ok_or_else(too_large)?
    } else {
        match power(exponent) {
            Some(divisor) => value.div_ceil(divisor),
            // Smaller than one nano-unit, but not zero: round up like Kubernetes does.
            None => u128::from(value > 0),
        }
    };
    Ok(Amount(nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nanos(text: &str) -> u128 {
        parse_quantity(text)
            .unwrap_or_else(|e| panic!("{e}"))
            .nanos()
    }

    #[test]
    fn quantities_compare_like_kubernetes_compares_them() {
        let cases: &[(&str, u128)] = &[
            ("0", 0),
            ("1", 1_000_000_000),
            ("+1", 1_000_000_000),
            ("500m", 500_000_000),
            ("0.5", 500_000_000),
            (".5", 500_000_000),
            ("1.", 1_000_000_000),
            ("20m", 20_000_000),
            ("1n", 1),
            ("1u", 1_000),
            ("1k", 1_000_000_000_000),
            ("256Mi", 256 * (1 << 20) * 1_000_000_000),
            ("1.5Gi", 3 * (1 << 29) * 1_000_000_000),
            ("1G", 1_000_000_000_000_000_000),
            ("2e3", 2_000_000_000_000),
            ("2E3", 2_000_000_000_000),
            ("1e-3", 1_000_000),
            ("64Ei", 64 * (1u128 << 60) * 1_000_000_000),
            ("0.1n", 1),
        ];
        for &(text, expected) in cases {
            assert_eq!(nanos(text), expected, "{text}");
        }
        assert!(nanos("512Mi") > nanos("500M"));
        assert!(nanos("1") > nanos("999m"));
        assert_eq!(nanos("1000m"), nanos("1"));
        assert_eq!(nanos("1024Ki"), nanos("1Mi"));
        for bad in [
            "", "m", "abc", "1x", "1.2.3", "-1", "1 Gi", "1Gi ", "1e", "1e99", "Mi", "1ki",
        ] {
            // A trailing blank is trimmed like kubectl does; the rest must fail.
            if bad == "1Gi " {
                assert!(parse_quantity(bad).is_ok());
                continue;
            }
            assert!(parse_quantity(bad).is_err(), "{bad:?} parsed");
        }
        assert!(parse_quantity(&"9".repeat(40)).is_err());
        assert!(parse_quantity("999999999999999999999999Ei").is_err());
    }
}
