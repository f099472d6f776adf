//! Input checks for CreateRide. They run before any database work, so a bad request writes
//! nothing.

use rocket_rides_log::record::MAX_DISTANCE;

use crate::error::RideError;

/// Longest idempotency key accepted, in characters.
pub const MAX_KEY_CHARS: usize = 255;

/// A distance in metres, rounded to whole millimetres (the stated precision, so no record
/// carries hundreds of decimal places into every total): present, finite, and after rounding
/// at least 1 mm and at most `MAX_DISTANCE`. Returns the rounded distance.
pub fn distance(distance: Option<f64>) -> Result<f64, RideError> {
    let d = distance.ok_or(RideError::MissingDistance)?;
    let rounded = (d * 1000.0).round() / 1000.0;
    if d.is_finite() && (0.001..=MAX_DISTANCE).contains(&rounded) {
        Ok(rounded)
    } else {
        Err(RideError::InvalidDistance(d))
    }
}

/// The exact decimal that the database stores for a rounded distance `d`: whole millimetres,
/// without trailing zeros, never in exponent form.
pub fn decimal(d: f64) -> String {
    let mm = (d * 1000.0).round() as u64;
    let text = format!("{}.{:03}", mm / 1000, mm % 1000);
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// An optional idempotency key: empty means none.
pub fn idempotency_key(key: &str) -> Result<Option<&str>, RideError> {
    match key.chars().count() {
        0 => Ok(None),
        n if n > MAX_KEY_CHARS => Err(RideError::KeyTooLong(n)),
        _ => Ok(Some(key)),
    }
}

/// The rider, if named: the partition key (at most 255 characters).
pub fn rider_id(rider: &str) -> Result<Option<&str>, RideError> {
    match rider.chars().count() {
        0 => Ok(None),
        n if n > MAX_KEY_CHARS => Err(RideError::RiderTooLong(n)),
        _ => Ok(Some(rider)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_finite_positive_distances_up_to_the_limit() {
        for good in [0.001, 12.5, 0.0125, MAX_DISTANCE] {
            assert_eq!(
                distance(Some(good)).unwrap(),
                (good * 1000.0).round() / 1000.0
            );
        }
        assert_eq!(distance(Some(1.23456)).unwrap(), 1.235);
        assert!(matches!(distance(None), Err(RideError::MissingDistance)));
        for bad in [
            0.0,
            -0.0,
            -1.0,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::MIN_POSITIVE,
            5e-324,
            0.0004,
            MAX_DISTANCE + 0.001,
        ] {
            assert!(
                matches!(distance(Some(bad)), Err(RideError::InvalidDistance(_))),
                "{bad} was accepted"
            );
        }
    }

    #[test]
    fn decimals_are_exact_and_plain() {
        assert_eq!(decimal(12.5), "12.5");
        assert_eq!(decimal(1_000_000.0), "1000000");
        assert_eq!(decimal(0.1), "0.1");
        assert_eq!(decimal(0.001), "0.001");
        for d in [0.1, 1.0 / 3.0, 987.654321, 0.0125] {
            let d = distance(Some(d)).unwrap();
            let text = decimal(d);
            assert!(rocket_rides_log::record::is_valid_distance(&text), "{text}");
            assert_eq!(text.parse::<f64>().unwrap(), d);
        }
    }

    #[test]
    fn keys_are_optional_and_bounded() {
        assert_eq!(idempotency_key("").unwrap(), None);
        assert_eq!(idempotency_key("k-1").unwrap(), Some("k-1"));
        assert!(idempotency_key(&"é".repeat(MAX_KEY_CHARS)).is_ok());
        assert!(matches!(
            idempotency_key(&"x".repeat(MAX_KEY_CHARS + 1)),
            Err(RideError::KeyTooLong(256))
        ));
    }

    proptest::proptest! {
        /// Whatever the client sends, a distance is accepted exactly when it rounds to a whole
        /// number of millimetres in range, and what is stored reads back as the rounded double.
        #[test]
        fn any_double_is_accepted_only_in_range(bits in proptest::prelude::any::<u64>()) {
            let d = f64::from_bits(bits);
            let mm = (d * 1000.0).round();
            let in_range = d.is_finite() && mm >= 1.0 && mm / 1000.0 <= MAX_DISTANCE;
            proptest::prop_assert_eq!(distance(Some(d)).is_ok(), in_range);
            if let Ok(rounded) = distance(Some(d)) {
                let text = decimal(rounded);
                proptest::prop_assert!(rocket_rides_log::record::is_valid_distance(&text));
                proptest::prop_assert_eq!(text.parse::<f64>().unwrap(), rounded);
            }
        }

        #[test]
        fn keys_are_accepted_up_to_the_limit(key in "\\PC{0,300}") {
            let chars = key.chars().count();
            proptest::prop_assert_eq!(idempotency_key(&key).is_ok(), chars <= MAX_KEY_CHARS);
        }
    }
}
