//! The byte-range headers files use, parsed without I/O: `Content-Range`
//! on an upload chunk, `Range` on a download.

/// The part of a file one upload chunk carries: `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Chunk {
    pub start: u64,
    pub end: u64,
}

/// Why a `Content-Range` does not fit the upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BadChunk(pub String);

/// The chunk a `Content-Range: bytes START-END/TOTAL` header (END
/// inclusive; TOTAL may be `*`) names in a file of `size` bytes. Without the
/// header the chunk is the whole file.
pub(crate) fn upload_chunk(header: Option<&str>, size: u64) -> Result<Chunk, BadChunk> {
    let Some(header) = header else {
        return Ok(Chunk {
            start: 0,
            end: size,
        });
    };
    let bad = || {
        BadChunk(format!(
            "Content-Range `{header}` is not `bytes START-END/TOTAL`"
        ))
    };
    let spec = header.trim().strip_prefix("bytes ").ok_or_else(bad)?.trim();
    let (range, total) = spec.split_once('/').ok_or_else(bad)?;
    let (start, last) = range.split_once('-').ok_or_else(bad)?;
    let start = number(start).ok_or_else(bad)?;
    let last = number(last).ok_or_else(bad)?;
    if total != "*" {
        let total = number(total).ok_or_else(bad)?;
        if total != size {
            return Err(BadChunk(format!(
                "Content-Range total {total} is not the declared size {size}"
            )));
        }
    }
    if last < start || last >= size {
        return Err(BadChunk(format!(
            "Content-Range bytes {start}-{last} do not lie within the {size} byte file"
        )));
    }
    Ok(Chunk {
        start,
        end: last + 1,
    })
}

/// What a download's `Range` header asks of a file of `size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Requested {
    /// No usable `Range`: the whole file, `200`.
    Whole,
    /// One satisfiable range `[start, end)`: `206`.
    Part { start: u64, end: u64 },
    /// A range that lies outside the file: `416`.
    Unsatisfiable,
}

/// Reads `Range: bytes=A-B`, `bytes=A-` and `bytes=-N`. A header that is
/// not one range of bytes is ignored, as RFC 9110 allows: the whole file is
/// sent.
pub(crate) fn download_range(header: Option<&str>, size: u64) -> Requested {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return Requested::Whole;
    };
    if spec.contains(',') {
        return Requested::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Requested::Whole;
    };
    match (first.is_empty(), last.is_empty()) {
        // bytes=-N: the last N bytes.
        (true, false) => match number(last) {
            Some(0) => Requested::Unsatisfiable,
            Some(n) if size > 0 => Requested::Part {
                start: size.saturating_sub(n),
                end: size,
            },
            Some(_) => Requested::Unsatisfiable,
            None => Requested::Whole,
        },
        // bytes=A-: from A to the end.
        (false, true) => match number(first) {
            Some(start) if start < size => Requested::Part { start, end: size },
            Some(_) => Requested::Unsatisfiable,
            None => Requested::Whole,
        },
        (false, false) => match (number(first), number(last)) {
            (Some(start), Some(last)) if start <= last => {
                if start >= size {
                    Requested::Unsatisfiable
                } else {
                    Requested::Part {
                        start,
                        end: last.saturating_add(1).min(size),
                    }
                }
            }
            _ => Requested::Whole,
        },
        (true, true) => Requested::Whole,
    }
}

/// A decimal number of ASCII digits only (no sign, no spaces).
fn number(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_names_a_chunk_inside_the_declared_size() {
        assert_eq!(upload_chunk(None, 10), Ok(Chunk { start: 0, end: 10 }));
        assert_eq!(
            upload_chunk(Some("bytes 0-3/10"), 10),
            Ok(Chunk { start: 0, end: 4 })
        );
        assert_eq!(
            upload_chunk(Some("bytes 4-9/*"), 10),
            Ok(Chunk { start: 4, end: 10 })
        );
        for bad in [
            "bytes 0-3/11",
            "bytes 0-10/10",
            "bytes 5-4/10",
            "bytes -3/10",
            "bytes 0-3",
            "bits 0-3/10",
            "bytes +1-3/10",
            "bytes 0- 3/10",
            "bytes */10",
            "bytes 99999999999999999999-1/10",
        ] {
            assert!(upload_chunk(Some(bad), 10).is_err(), "{bad}");
        }
    }

    #[test]
    fn range_reads_one_range_and_ignores_the_rest() {
        let part = |start, end| Requested::Part { start, end };
        assert_eq!(download_range(None, 10), Requested::Whole);
        assert_eq!(download_range(Some("bytes=0-3"), 10), part(0, 4));
        assert_eq!(download_range(Some("bytes=4-"), 10), part(4, 10));
        assert_eq!(download_range(Some("bytes=-3"), 10), part(7, 10));
        assert_eq!(download_range(Some("bytes=-30"), 10), part(0, 10));
        assert_eq!(
            download_range(Some("bytes=5-100"), 10),
            part(5, 10),
            "an end past the file is cut to it"
        );
        assert_eq!(download_range(Some("bytes=9-9"), 10), part(9, 10));
        for unsatisfiable in ["bytes=10-", "bytes=10-12", "bytes=-0"] {
            assert_eq!(
                download_range(Some(unsatisfiable), 10),
                Requested::Unsatisfiable,
                "{unsatisfiable}"
            );
        }
        assert_eq!(
            download_range(Some("bytes=0-"), 0),
            Requested::Unsatisfiable
        );
        for ignored in [
            "bytes=0-1,4-5",
            "bytes=3-1",
            "bytes=a-b",
            "items=0-1",
            "bytes=-",
            "bytes",
        ] {
            assert_eq!(
                download_range(Some(ignored), 10),
                Requested::Whole,
                "{ignored}"
            );
        }
    }
}
