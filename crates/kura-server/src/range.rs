//! `Range: bytes=...` parsing for blob GETs (RFC 9110, single ranges).

use kura_storage::ByteRange;

/// What a Range header asks of a blob of `size` bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum RangeRequest {
    /// Serve the whole blob (no header, or one we do not honour, such as multiple ranges).
    Full,
    Partial(ByteRange),
    Unsatisfiable,
}

pub fn parse(header: Option<&str>, size: u64) -> RangeRequest {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return RangeRequest::Full;
    };
    if spec.contains(',') {
        return RangeRequest::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeRequest::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    let parsed = match (a.is_empty(), b.is_empty()) {
        (false, _) => {
            let Ok(start) = a.parse::<u64>() else {
                return RangeRequest::Full;
            };
            let end = if b.is_empty() {
                u64::MAX
            } else {
                match b.parse::<u64>() {
                    Ok(e) if e >= start => e,
                    _ => return RangeRequest::Full,
                }
            };
            if start >= size {
                return RangeRequest::Unsatisfiable;
            }
            ByteRange {
                start,
                end: end.min(size - 1),
            }
        }
        (true, false) => {
            let Ok(suffix) = b.parse::<u64>() else {
                return RangeRequest::Full;
            };
            if suffix == 0 || size == 0 {
                return RangeRequest::Unsatisfiable;
            }
            ByteRange {
                start: size.saturating_sub(suffix),
                end: size - 1,
            }
        }
        (true, true) => return RangeRequest::Full,
    };
    RangeRequest::Partial(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(start: u64, end: u64) -> RangeRequest {
        RangeRequest::Partial(ByteRange { start, end })
    }

    #[test]
    fn ranges() {
        assert_eq!(parse(None, 10), RangeRequest::Full);
        assert_eq!(parse(Some("bytes=0-4"), 10), p(0, 4));
        assert_eq!(parse(Some("bytes=5-"), 10), p(5, 9));
        assert_eq!(parse(Some("bytes=5-100"), 10), p(5, 9));
        assert_eq!(parse(Some("bytes=-3"), 10), p(7, 9));
        assert_eq!(parse(Some("bytes=-30"), 10), p(0, 9));
        assert_eq!(parse(Some("bytes=10-"), 10), RangeRequest::Unsatisfiable);
        assert_eq!(parse(Some("bytes=0-0"), 0), RangeRequest::Unsatisfiable);
        assert_eq!(parse(Some("bytes=-0"), 10), RangeRequest::Unsatisfiable);
        assert_eq!(parse(Some("bytes=4-2"), 10), RangeRequest::Full);
        assert_eq!(parse(Some("bytes=0-1,3-4"), 10), RangeRequest::Full);
        assert_eq!(parse(Some("items=0-1"), 10), RangeRequest::Full);
    }
}
