//! Parses `/v2/...` paths. Repository names contain slashes, so an endpoint is recognised by
//! its trailing segments and everything before them is the name.

/// A distribution API endpoint with its raw (unvalidated) parameters.
#[derive(Debug, PartialEq, Eq)]
pub enum V2Route<'a> {
    Manifest { name: &'a str, reference: &'a str },
    Blob { name: &'a str, digest: &'a str },
    UploadStart { name: &'a str },
    Upload { name: &'a str, id: &'a str },
    Tags { name: &'a str },
    Referrers { name: &'a str, digest: &'a str },
}

/// `rest` is the path after `/v2/`.
pub fn parse(rest: &str) -> Option<V2Route<'_>> {
    let (head, last) = rest.rsplit_once('/')?;
    if let Some(name) = head.strip_suffix("/blobs/uploads") {
        return non_empty(name).map(|name| {
            if last.is_empty() {
                V2Route::UploadStart { name }
            } else {
                V2Route::Upload { name, id: last }
            }
        });
    }
    if last == "uploads"
        && let Some(name) = head.strip_suffix("/blobs")
    {
        return non_empty(name).map(|name| V2Route::UploadStart { name });
    }
    if last == "list"
        && let Some(name) = head.strip_suffix("/tags")
    {
        return non_empty(name).map(|name| V2Route::Tags { name });
    }
    let (name, kind) = head.rsplit_once('/')?;
    let name = non_empty(name)?;
    if last.is_empty() {
        return None;
    }
    match kind {
        "manifests" => Some(V2Route::Manifest {
            name,
            reference: last,
        }),
        "blobs" => Some(V2Route::Blob { name, digest: last }),
        "referrers" => Some(V2Route::Referrers { name, digest: last }),
        _ => None,
    }
}

fn non_empty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(
            parse("a/b/manifests/latest"),
            Some(V2Route::Manifest {
                name: "a/b",
                reference: "latest"
            })
        );
        assert_eq!(
            parse("a/blobs/sha256:00"),
            Some(V2Route::Blob {
                name: "a",
                digest: "sha256:00"
            })
        );
        assert_eq!(
            parse("x/y/blobs/uploads/"),
            Some(V2Route::UploadStart { name: "x/y" })
        );
        assert_eq!(
            parse("x/y/blobs/uploads"),
            Some(V2Route::UploadStart { name: "x/y" })
        );
        assert_eq!(
            parse("x/blobs/uploads/abc-1"),
            Some(V2Route::Upload {
                name: "x",
                id: "abc-1"
            })
        );
        assert_eq!(parse("p/tags/list"), Some(V2Route::Tags { name: "p" }));
        assert_eq!(
            parse("blobs/manifests/v1"),
            Some(V2Route::Manifest {
                name: "blobs",
                reference: "v1"
            })
        );
        assert_eq!(
            parse("r/referrers/sha256:1"),
            Some(V2Route::Referrers {
                name: "r",
                digest: "sha256:1"
            })
        );
        assert_eq!(parse("manifests/x"), None);
        assert_eq!(parse("a/manifests/"), None);
        assert_eq!(parse("nothing"), None);
        assert_eq!(parse("a/other/x"), None);
    }
}
