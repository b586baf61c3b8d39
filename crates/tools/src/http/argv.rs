//! Turns a task's argv (`["GET", URL]`, `["POST", URL, BODY]`,
//! `["POST", URL, BODY, CONTENT_TYPE]`) into an [`HttpRequest`]. Only the shape is checked
//! here; the URL, scheme and policy are checked by [`super::HttpTool::fetch`].

use super::{HttpError, HttpRequest};

const USAGE: &str = r#"expected ["GET", URL], ["POST", URL, BODY] or ["POST", URL, BODY, CONTENT_TYPE]"#;

/// Parses a task's `http` argv. The method is matched without regard to case and stored in
/// upper case; anything but the three shapes above is [`HttpError::Invalid`].
pub fn request_from_argv(argv: &[String]) -> Result<HttpRequest, HttpError> {
    let invalid = |why: String| HttpError::Invalid(format!("{why}: {USAGE}"));
    let Some((method, rest)) = argv.split_first() else {
        return Err(invalid("empty http argv".into()));
    };
    let method = method.to_ascii_uppercase();
    let request = |url: &String, body: Option<&String>, content_type: Option<&String>| HttpRequest {
        method: method.clone(),
        url: url.clone(),
        body: body.map(|b| b.as_bytes().to_vec()),
        content_type: content_type.cloned(),
    };
    match (method.as_str(), rest) {
        ("GET", [url]) => Ok(request(url, None, None)),
        ("POST", [url, body]) => Ok(request(url, Some(body), None)),
        ("POST", [url, body, content_type]) => Ok(request(url, Some(body), Some(content_type))),
        ("GET" | "POST", _) => Err(invalid(format!("{method} with {} argument(s)", rest.len()))),
        _ => Err(invalid(format!("method {method:?} is not allowed (only GET and POST)"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(parts: &[&str]) -> Vec<String> {
        parts.iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn the_three_shapes_parse() {
        let get = request_from_argv(&argv(&["GET", "https://a.example/x"])).unwrap();
        assert_eq!(
            (get.method.as_str(), get.url.as_str(), get.body, get.content_type),
            ("GET", "https://a.example/x", None, None)
        );
        let post = request_from_argv(&argv(&["post", "https://a.example/", "{\"a\":1}"])).unwrap();
        assert_eq!(post.method, "POST");
        assert_eq!(post.body.as_deref(), Some(&b"{\"a\":1}"[..]));
        assert_eq!(post.content_type, None);
        let typed = request_from_argv(&argv(&["POST", "https://a.example/", "", "application/json"])).unwrap();
        assert_eq!(typed.body.as_deref(), Some(&b""[..]));
        assert_eq!(typed.content_type.as_deref(), Some("application/json"));
    }

    #[test]
    fn every_other_shape_is_invalid_with_the_usage() {
        let cases: &[&[&str]] = &[
            &[],
            &["GET"],
            &["GET", "http://a/", "body"],
            &["POST", "http://a/"],
            &["POST", "http://a/", "b", "text/plain", "extra"],
            &["PUT", "http://a/", "b"],
            &["DELETE", "http://a/"],
            &["http://a/"],
        ];
        for case in cases {
            let err = request_from_argv(&argv(case)).unwrap_err();
            assert!(matches!(err, HttpError::Invalid(_)), "{case:?}: {err:?}");
            assert!(err.to_string().contains(USAGE), "{case:?}: {err}");
            assert_eq!(err.kind(), "POLICY_DENIED");
        }
    }
}
