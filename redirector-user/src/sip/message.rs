//! The message scanner. Headers are borrowed slices of the datagram; a
//! folded value keeps its line breaks and is unfolded only when read.

use std::borrow::Cow;

/// Why a datagram is not a usable SIP message. The `Display` text is short
/// and title-cased: it becomes the reason phrase of the `400` answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("Empty Message")]
    Empty,
    #[error("Headers Not UTF-8")]
    NotUtf8,
    #[error("Malformed Start Line")]
    StartLine,
    #[error("Unsupported SIP Version")]
    Version,
    #[error("Malformed Header Line")]
    HeaderLine,
    #[error("No Blank Line After Headers")]
    Unterminated,
    #[error("Malformed Content-Length")]
    ContentLength,
    #[error("Content-Length Exceeds Datagram")]
    ContentLengthTooLarge,
    #[error("Missing {0} Header")]
    Missing(&'static str),
    #[error("Malformed {0} Header")]
    Malformed(&'static str),
    #[error("CSeq Method Mismatch")]
    CSeqMethod,
    #[error("{0} Address Of Record Too Long")]
    TooLong(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartLine<'a> {
    Request { method: &'a str, uri: &'a str },
    Response { code: u16, reason: &'a str },
}

/// Header names redirector acts on; everything else is `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderKind {
    Via,
    From,
    To,
    CallId,
    CSeq,
    MaxForwards,
    Contact,
    ContentLength,
    ContentType,
    Expires,
    Event,
    Supported,
    Subject,
    ContentEncoding,
    /// `Redirector-Cookie`: a probe answer's cookie (see `probe`).
    RedirectorCookie,
    Other,
}

impl HeaderKind {
    /// Full and compact forms, case-insensitively (RFC 3261 §7.3.3, RFC 6665 `o`).
    pub fn of(name: &str) -> Self {
        const NAMES: &[(&str, Option<&str>, HeaderKind)] = &[
            ("via", Some("v"), HeaderKind::Via),
            ("from", Some("f"), HeaderKind::From),
            ("to", Some("t"), HeaderKind::To),
            ("call-id", Some("i"), HeaderKind::CallId),
            ("cseq", None, HeaderKind::CSeq),
            ("max-forwards", None, HeaderKind::MaxForwards),
            ("contact", Some("m"), HeaderKind::Contact),
            ("content-length", Some("l"), HeaderKind::ContentLength),
            ("content-type", Some("c"), HeaderKind::ContentType),
            ("expires", None, HeaderKind::Expires),
            ("event", Some("o"), HeaderKind::Event),
            ("supported", Some("k"), HeaderKind::Supported),
            ("subject", Some("s"), HeaderKind::Subject),
            ("content-encoding", Some("e"), HeaderKind::ContentEncoding),
            ("redirector-cookie", None, HeaderKind::RedirectorCookie),
        ];
        NAMES
            .iter()
            .find(|(full, compact, _)| {
                name.eq_ignore_ascii_case(full) || compact.is_some_and(|c| name.eq_ignore_ascii_case(c))
            })
            .map_or(HeaderKind::Other, |(_, _, kind)| *kind)
    }

    pub const fn canonical_name(self) -> &'static str {
        match self {
            HeaderKind::Via => "Via",
            HeaderKind::From => "From",
            HeaderKind::To => "To",
            HeaderKind::CallId => "Call-ID",
            HeaderKind::CSeq => "CSeq",
            HeaderKind::MaxForwards => "Max-Forwards",
            HeaderKind::Contact => "Contact",
            HeaderKind::ContentLength => "Content-Length",
            HeaderKind::ContentType => "Content-Type",
            HeaderKind::Expires => "Expires",
            HeaderKind::Event => "Event",
            HeaderKind::Supported => "Supported",
            HeaderKind::Subject => "Subject",
            HeaderKind::ContentEncoding => "Content-Encoding",
            HeaderKind::RedirectorCookie => "Redirector-Cookie",
            HeaderKind::Other => "",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<'a> {
    pub name: &'a str,
    /// Trimmed value; may contain folds (line break + whitespace).
    pub value: &'a str,
    pub kind: HeaderKind,
}

impl Header<'_> {
    pub fn unfolded(&self) -> Cow<'_, str> {
        unfold(self.value)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message<'a> {
    pub start: StartLine<'a>,
    pub headers: Vec<Header<'a>>,
    pub body: &'a [u8],
}

/// Headers every request and response must carry (RFC 3261 §8.1.1, §8.2.6).
const MANDATORY: &[HeaderKind] =
    &[HeaderKind::Via, HeaderKind::From, HeaderKind::To, HeaderKind::CallId, HeaderKind::CSeq];

impl<'a> Message<'a> {
    pub fn parse(datagram: &'a [u8]) -> Result<Self, ParseError> {
        let datagram = skip_leading_blank_lines(datagram);
        if datagram.is_empty() {
            return Err(ParseError::Empty);
        }
        let (head, body) = split_head(datagram)?;
        let head = std::str::from_utf8(head).map_err(|_| ParseError::NotUtf8)?;
        let mut lines = logical_lines(head);
        let start = parse_start_line(lines.next().ok_or(ParseError::StartLine)?)?;
        // Room for a typical request's headers up front: growing the vector
        // header by header cost more than parsing them.
        let mut headers = Vec::with_capacity(16);
        for line in lines {
            headers.push(parse_header(line)?);
        }
        let mut message = Self { start, headers, body };
        message.body = message.checked_body()?;
        message.check_mandatory()?;
        Ok(message)
    }

    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }

    pub fn method(&self) -> Option<&'a str> {
        match self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    pub fn header(&self, kind: HeaderKind) -> Option<&Header<'a>> {
        self.headers.iter().find(|h| h.kind == kind)
    }

    pub fn headers_of(&self, kind: HeaderKind) -> impl Iterator<Item = &Header<'a>> {
        self.headers.iter().filter(move |h| h.kind == kind)
    }

    /// Every Via value in order, whether on separate lines or comma lists.
    pub fn via_values(&self) -> impl Iterator<Item = Cow<'a, str>> + '_ {
        self.headers_of(HeaderKind::Via).flat_map(|h| split_list(h.value).map(unfold))
    }

    /// The (unfolded) value of the first header of `kind`.
    pub fn value(&self, kind: HeaderKind) -> Option<Cow<'a, str>> {
        self.header(kind).map(|h| unfold(h.value))
    }

    /// CSeq as (number, method).
    pub fn cseq(&self) -> Result<(u32, String), ParseError> {
        let value = self.value(HeaderKind::CSeq).ok_or(ParseError::Missing("CSeq"))?;
        let (number, method) = parse_cseq(&value)?;
        Ok((number, method.to_owned()))
    }

    /// The Record-Route values in order, each unfolded: a dialog's route
    /// set as its first request sets it (RFC 3261 §12.1.1).
    pub fn record_route_set(&self) -> Vec<String> {
        self.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("Record-Route"))
            .flat_map(|h| split_list(h.value).map(|v| unfold(v).trim().to_owned()))
            .collect()
    }

    /// Max-Forwards, if present.
    pub fn max_forwards(&self) -> Result<Option<u8>, ParseError> {
        self.value(HeaderKind::MaxForwards)
            .map(|v| {
                v.trim().parse::<u32>().map(|n| n.min(255) as u8).map_err(|_| ParseError::Malformed("Max-Forwards"))
            })
            .transpose()
    }

    /// The body, cut to Content-Length (extra bytes in a UDP datagram are
    /// discarded, RFC 3261 §18.3); a Content-Length beyond it is an error.
    fn checked_body(&self) -> Result<&'a [u8], ParseError> {
        let Some(value) = self.value(HeaderKind::ContentLength) else {
            return Ok(self.body);
        };
        // Repeated values that disagree would let two parsers see two bodies.
        if self.headers_of(HeaderKind::ContentLength).any(|h| h.value.trim() != value.trim()) {
            return Err(ParseError::ContentLength);
        }
        let length: usize = value.trim().parse().map_err(|_| ParseError::ContentLength)?;
        self.body.get(..length).ok_or(ParseError::ContentLengthTooLarge)
    }

    fn check_mandatory(&self) -> Result<(), ParseError> {
        for kind in MANDATORY {
            if self.header(*kind).is_none() {
                return Err(ParseError::Missing(kind.canonical_name()));
            }
        }
        for via in self.via_values() {
            crate::sip::Via::parse(&via)?;
        }
        let cseq = self.value(HeaderKind::CSeq).ok_or(ParseError::Missing("CSeq"))?;
        let (_, method) = parse_cseq(&cseq)?;
        if let Some(request_method) = self.method()
            && method != request_method
        {
            return Err(ParseError::CSeqMethod);
        }
        self.max_forwards()?;
        Ok(())
    }
}

/// A CSeq value's number and method.
fn parse_cseq(value: &str) -> Result<(u32, &str), ParseError> {
    let mut parts = value.split_ascii_whitespace();
    let number = parts.next().and_then(|n| n.parse().ok()).ok_or(ParseError::Malformed("CSeq"))?;
    let method = parts.next().filter(|m| is_token(m)).ok_or(ParseError::Malformed("CSeq"))?;
    if parts.next().is_some() {
        return Err(ParseError::Malformed("CSeq"));
    }
    Ok((number, method))
}

fn skip_leading_blank_lines(mut datagram: &[u8]) -> &[u8] {
    // RFC 3261 §7.5: CRLFs before the start line are ignored (keep-alives).
    while let [b'\r' | b'\n', rest @ ..] = datagram {
        datagram = rest;
    }
    datagram
}

/// Splits at the first empty line (CRLF CRLF, or bare LF LF).
fn split_head(datagram: &[u8]) -> Result<(&[u8], &[u8]), ParseError> {
    let mut i = 0;
    while i < datagram.len() {
        if datagram[i] == b'\n' {
            let rest = &datagram[i + 1..];
            let blank = match rest {
                [b'\r', b'\n', ..] => Some(2),
                [b'\n', ..] => Some(1),
                _ => None,
            };
            if let Some(len) = blank {
                return Ok((&datagram[..i + 1], &rest[len..]));
            }
        }
        i += 1;
    }
    Err(ParseError::Unterminated)
}

/// Lines of the head with folded continuation lines joined (the slice spans
/// the fold); line terminators are not included.
fn logical_lines(head: &str) -> impl Iterator<Item = &str> {
    let bytes = head.as_bytes();
    let mut start = 0;
    std::iter::from_fn(move || {
        while start < bytes.len() {
            let mut end = start;
            loop {
                let Some(offset) = bytes[end..].iter().position(|&b| b == b'\n') else {
                    end = bytes.len();
                    break;
                };
                end += offset;
                let continues = matches!(bytes.get(end + 1), Some(b' ' | b'\t'));
                if !continues {
                    break;
                }
                end += 1;
            }
            let line = head[start..end].trim_end_matches('\r');
            start = end + 1;
            if !line.is_empty() {
                return Some(line);
            }
        }
        None
    })
}

fn parse_start_line(line: &str) -> Result<StartLine<'_>, ParseError> {
    let mut parts = line.splitn(3, ' ');
    let (first, second, third) = (parts.next(), parts.next(), parts.next());
    let (Some(first), Some(second), Some(third)) = (first, second, third) else {
        return Err(ParseError::StartLine);
    };
    if let Some(version) = first.strip_prefix("SIP/") {
        if version != "2.0" {
            return Err(ParseError::Version);
        }
        let code: u16 = second.parse().map_err(|_| ParseError::StartLine)?;
        if !(100..=699).contains(&code) || second.len() != 3 {
            return Err(ParseError::StartLine);
        }
        return Ok(StartLine::Response { code, reason: third });
    }
    if !is_token(first) || second.is_empty() || second.contains(char::is_whitespace) || !second.contains(':') {
        return Err(ParseError::StartLine);
    }
    match third.strip_prefix("SIP/") {
        Some("2.0") => Ok(StartLine::Request { method: first, uri: second }),
        Some(_) => Err(ParseError::Version),
        None => Err(ParseError::StartLine),
    }
}

fn parse_header(line: &str) -> Result<Header<'_>, ParseError> {
    let (name, value) = line.split_once(':').ok_or(ParseError::HeaderLine)?;
    let name = name.trim_end_matches([' ', '\t']);
    if !is_token(name) {
        return Err(ParseError::HeaderLine);
    }
    let value = value.trim_matches(|c: char| c.is_ascii_whitespace());
    Ok(Header { name, value, kind: HeaderKind::of(name) })
}

/// RFC 3261 `token` characters, by byte.
const TOKEN: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = 0;
    while byte < 256 {
        let b = byte as u8;
        table[byte] = b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~');
        byte += 1;
    }
    table
};

fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| TOKEN[b as usize])
}

/// Replaces each fold (line break followed by whitespace) with one space.
pub fn unfold(value: &str) -> Cow<'_, str> {
    if !value.contains('\n') {
        return Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\r' || c == '\n' {
            while chars.peek().is_some_and(|c| c.is_ascii_whitespace()) {
                chars.next();
            }
            out.push(' ');
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Position of the first character outside double quotes (backslash
/// escapes honoured inside them) for which `stop` is true; `stop` sees only
/// unquoted characters.
pub(super) fn find_unquoted(value: &str, mut stop: impl FnMut(char) -> bool) -> Option<usize> {
    let (mut quoted, mut escaped) = (false, false);
    for (i, c) in value.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            _ if quoted => {}
            c if stop(c) => return Some(i),
            _ => {}
        }
    }
    None
}

/// Splits a header value on commas outside double quotes and angle
/// brackets, trimming each element (RFC 3261 §7.3.1).
pub fn split_list(value: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(value);
    std::iter::from_fn(move || {
        loop {
            let current = rest?;
            let mut angle = false;
            let cut = find_unquoted(current, |c| {
                match c {
                    '<' => angle = true,
                    '>' => angle = false,
                    ',' => return !angle,
                    _ => {}
                }
                false
            });
            let (item, next) = match cut {
                Some(i) => (&current[..i], Some(&current[i + 1..])),
                None => (current, None),
            };
            rest = next;
            let item = item.trim_matches(|c: char| c.is_ascii_whitespace());
            if !item.is_empty() {
                return Some(item);
            }
        }
    })
}
