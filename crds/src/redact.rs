//! URLs as logs, messages and conditions may show them: without user info
//! (`user:password@`), query string or fragment, which is where passwords, tokens and
//! presigned signatures live. Everything that writes a URL where people read it goes
//! through [`url`] (or [`urls_in`] for text that may quote URLs, such as error chains).

/// `text` (a URL) without user info, query string and fragment:
/// `https://user:pw@host:8443/m.tflite?sig=x#f` is written `https://host:8443/m.tflite`.
///
/// Works on any text, parsable or not (a URL with an unset `${VAR}` still has its secret
/// parts removed); text without `://` only loses its query string and fragment.
pub fn url(text: &str) -> String {
    let end = text.find(['?', '#']).unwrap_or(text.len());
    let text = &text[..end];
    let Some((scheme, rest)) = text.split_once("://") else {
        return text.to_string();
    };
    // The authority ends at the first `/` (or `\`, which URL parsers treat alike for
    // http and https).
    let authority_end = rest.find(['/', '\\']).unwrap_or(rest.len());
    let userinfo_end = match rest[..authority_end].rfind('@') {
        Some(at) => Some(at),
        // `user:pa/ss@host`: a `/` inside the password cut the authority short, leaving a
        // "port" that is not a number; everything up to the last `@` is user info.
        None if !port_is_numeric(&rest[..authority_end]) => rest.rfind('@'),
        None => None,
    };
    match userinfo_end {
        Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
        None => format!("{scheme}://{rest}"),
    }
}

/// `text` with every URL in it (a `scheme://` up to the next blank, quote, bracket or
/// comma) written as [`url`] writes it.
pub fn urls_in(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(sep) = rest.find("://") {
        let scheme_start = rest[..sep]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '.' | '-')))
            .map_or(0, |i| i + 1);
        let after = &rest[sep..];
        let end = after
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | ')' | '>' | ','))
            .map_or(rest.len(), |i| sep + i);
        out.push_str(&rest[..scheme_start]);
        out.push_str(&url(&rest[scheme_start..end]));
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// Whether an authority (`host`, `host:port`, `[v6]:port`) has no port or a numeric one.
fn port_is_numeric(authority: &str) -> bool {
    let after_host = match authority.rfind(']') {
        Some(bracket) => &authority[bracket + 1..],
        None => authority,
    };
    match after_host.rsplit_once(':') {
        Some((_, port)) => port.bytes().all(|b| b.is_ascii_digit()),
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_info_query_and_fragment_are_removed() {
        for (given, shown) in [
            (
                "https://user:pw@models.example:8443/m.tflite?X-Amz-Signature=abc#frag",
                "https://models.example:8443/m.tflite",
            ),
            ("https://token@host", "https://host"),
            (
                "http://u:p@127.0.0.1:9/steal?k=v",
                "http://127.0.0.1:9/steal",
            ),
            ("mqtt://127.0.0.1:1883", "mqtt://127.0.0.1:1883"),
            ("mqtts://a:b@[::1]:8883", "mqtts://[::1]:8883"),
            ("http://[::1]:80/x", "http://[::1]:80/x"),
            ("https://u:pa/ss@host/m", "https://host/m"),
            ("https://u:p@ss@host/m", "https://host/m"),
            ("https://registry/@scope/pkg", "https://registry/@scope/pkg"),
            ("https://${HOST}/x?token=${T}", "https://${HOST}/x"),
            ("not a url?secret", "not a url"),
            ("", ""),
        ] {
            assert_eq!(url(given), shown, "{given}");
        }
    }

    #[test]
    fn every_url_in_a_text_is_redacted() {
        assert_eq!(
            urls_in(
                "error sending request for url (https://u:p@h/m?sig=1): redirect to \"http://x@o:1/s?t=2\" refused"
            ),
            "error sending request for url (https://h/m): redirect to \"http://o:1/s\" refused"
        );
        assert_eq!(urls_in("no url here"), "no url here");
        assert_eq!(urls_in("at end https://a:b@c"), "at end https://c");
    }
}
