//! Table-driven propagation tests: every rule of the W3C processing model, tracestate and
//! baggage limits and grammar, B3, and `OTEL_PROPAGATORS`.

use http::HeaderMap;

use super::*;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SPAN: &str = "00f067aa0ba902b7";

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            http::HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

#[test]
fn traceparent_processing_model() {
    let valid = format!("00-{TRACE}-{SPAN}-01");
    // (value, Some((version, flags)) when valid, why)
    type Case = (String, Option<(u8, u8)>, &'static str);
    let cases: Vec<Case> = vec![
        (valid.clone(), Some((0, 1)), "valid, sampled"),
        (
            format!("00-{TRACE}-{SPAN}-00"),
            Some((0, 0)),
            "valid, not sampled",
        ),
        (
            format!("00-{TRACE}-{SPAN}-09"),
            Some((0, 9)),
            "unknown flags kept on receipt",
        ),
        (
            format!("  {valid}\t"),
            Some((0, 1)),
            "optional whitespace around the value",
        ),
        (
            format!("cc-{TRACE}-{SPAN}-01-what-the-future-will-be-like"),
            Some((0xcc, 1)),
            "higher version with extra fields",
        ),
        (
            format!("cc-{TRACE}-{SPAN}-01"),
            Some((0xcc, 1)),
            "higher version, exactly 55",
        ),
        (
            format!("cc-{TRACE}-{SPAN}-01.what"),
            None,
            "higher version: extra fields need a dash",
        ),
        (
            format!("00-{TRACE}-{SPAN}-01-extra"),
            None,
            "version 00 must be exactly 55 characters",
        ),
        (
            format!("ff-{TRACE}-{SPAN}-01"),
            None,
            "version ff is invalid",
        ),
        (format!("0-{TRACE}-{SPAN}-01"), None, "version too short"),
        (format!("000-{TRACE}-{SPAN}-01"), None, "version too long"),
        (
            format!("00-{}-{SPAN}-01", &TRACE[1..]),
            None,
            "trace id too short",
        ),
        (format!("00-{TRACE}0-{SPAN}-01"), None, "trace id too long"),
        (
            format!("00-{TRACE}-{}-01", &SPAN[1..]),
            None,
            "parent id too short",
        ),
        (format!("00-{TRACE}-{SPAN}0-01"), None, "parent id too long"),
        (format!("00-{TRACE}-{SPAN}-1"), None, "flags too short"),
        (format!("00-{TRACE}-{SPAN}-011"), None, "flags too long"),
        (
            format!("00-{}-{SPAN}-01", TRACE.to_uppercase()),
            None,
            "uppercase trace id",
        ),
        (
            format!("00-{TRACE}-{}-01", SPAN.to_uppercase()),
            None,
            "uppercase parent id",
        ),
        (format!("00-{TRACE}-{SPAN}-0A"), None, "uppercase flags"),
        (format!("0A-{TRACE}-{SPAN}-01"), None, "uppercase version"),
        (
            format!("00-{}-{SPAN}-01", "0".repeat(32)),
            None,
            "all-zero trace id",
        ),
        (
            format!("00-{TRACE}-{}-01", "0".repeat(16)),
            None,
            "all-zero parent id",
        ),
        (
            format!("00-{}g-{SPAN}-01", &TRACE[1..]),
            None,
            "illegal character in trace id",
        ),
        (
            format!("00-{TRACE}-{}x-01", &SPAN[1..]),
            None,
            "illegal character in parent id",
        ),
        (format!("00_{TRACE}-{SPAN}-01"), None, "wrong delimiter"),
        (format!("00-{TRACE}-{SPAN} -01"), None, "whitespace inside"),
        (String::new(), None, "empty"),
    ];
    for (value, want, why) in cases {
        let got = TraceParent::parse(&value);
        assert_eq!(
            got.map(|p| (p.version, p.flags.0)),
            want,
            "{why}: {value:?}"
        );
        if let Some(p) = got {
            assert_eq!(p.trace_id.to_string(), TRACE, "{why}");
            assert_eq!(p.parent_id.to_string(), SPAN, "{why}");
        }
    }
}

#[test]
fn we_send_version_00_with_defined_flags_only() {
    let p = TraceParent::parse(&format!("cc-{TRACE}-{SPAN}-ff-extra")).unwrap();
    let out = TraceParent::header(p.trace_id, p.parent_id, p.flags);
    assert_eq!(out, format!("00-{TRACE}-{SPAN}-03"));
    assert_eq!(TraceParent::parse(&out).unwrap().version, 0);
    for (flags, digits) in [(0x00, "00"), (0x01, "01"), (0x02, "02"), (0xfd, "01")] {
        let out = TraceParent::header(p.trace_id, p.parent_id, TraceFlags(flags));
        assert_eq!(out, format!("00-{TRACE}-{SPAN}-{digits}"));
        assert_eq!(out.len(), TRACEPARENT_LEN);
    }
}

#[test]
fn header_level_rules() {
    let p = Propagators::default();
    let valid = format!("00-{TRACE}-{SPAN}-01");
    // Two traceparent headers: invalid, the trace restarts, tracestate ignored.
    let got = p.extract(&headers(&[
        ("traceparent", &valid),
        ("traceparent", &valid),
        ("tracestate", "a=1"),
    ]));
    assert_eq!(got.parent, None);
    assert!(got.state.is_empty());
    // tracestate without a valid traceparent is ignored.
    let got = p.extract(&headers(&[
        ("traceparent", &format!("00-{TRACE}-{SPAN}-0")),
        ("tracestate", "a=1"),
    ]));
    assert_eq!(got.parent, None);
    assert!(got.state.is_empty());
    // Several tracestate headers are combined in order.
    let got = p.extract(&headers(&[
        ("traceparent", &valid),
        ("tracestate", "a=1,b=2"),
        ("tracestate", "c=3"),
    ]));
    assert!(got.parent.is_some());
    assert_eq!(got.state.header().as_deref(), Some("a=1,b=2,c=3"));
    // An invalid tracestate is dropped whole; the parent stays.
    let got = p.extract(&headers(&[
        ("traceparent", &valid),
        ("tracestate", "a=1,B=2"),
    ]));
    assert!(got.parent.is_some());
    assert!(got.state.is_empty());
    // The same whether the headers are found by one scan of a few names or, among many, by
    // lookups: with 0 and 30 other headers around them.
    for others in [0usize, 30] {
        let names: Vec<String> = (0..others).map(|i| format!("x-other-{i}")).collect();
        let mut pairs: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
        pairs.extend([
            ("Traceparent", valid.as_str()),
            ("tracestate", "a=1"),
            ("TRACESTATE", "b=2"),
            ("baggage", "k=v"),
        ]);
        let got = p.extract(&headers(&pairs));
        assert!(got.parent.is_some(), "{others} others");
        assert_eq!(
            got.state.header().as_deref(),
            Some("a=1,b=2"),
            "{others} others"
        );
        assert_eq!(got.baggage.get("k"), Some("v"), "{others} others");
        pairs.push(("traceparent", valid.as_str()));
        assert_eq!(
            p.extract(&headers(&pairs)).parent,
            None,
            "duplicate, {others} others"
        );
    }
}

#[test]
fn tracestate_grammar_and_limits() {
    let member = |i: usize| format!("k{i}=v{i}");
    let n = |n: usize| (0..n).map(member).collect::<Vec<_>>().join(",");
    let long_key = format!("a{}", "b".repeat(255));
    let too_long_key = format!("a{}", "b".repeat(256));
    let cases: Vec<(String, bool, &str)> = vec![
        ("congo=t61rcWkgMzE".into(), true, "simple"),
        (
            "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE".into(),
            true,
            "two",
        ),
        ("a=1, ,b=2,".into(), true, "empty members and OWS allowed"),
        ("".into(), true, "empty header"),
        (n(32), true, "32 members"),
        (n(33), false, "33 members"),
        ("a=1,a=2".into(), false, "duplicate key"),
        ("A=1".into(), false, "uppercase key"),
        ("1a=1".into(), false, "simple key must start with a letter"),
        ("1a@sys=1".into(), true, "tenant may start with a digit"),
        (
            "t@1sys=1".into(),
            false,
            "system id must start with a letter",
        ),
        ("t@systemtoolong1=1".into(), true, "system id of 14"),
        ("t@systemtoolong12=1".into(), false, "system id of 15"),
        ("t@s*-/_=1".into(), true, "system id characters"),
        (format!("{long_key}=1"), true, "key of 256"),
        (format!("{too_long_key}=1"), false, "key of 257"),
        ("a=".into(), false, "empty value"),
        ("a=x y".into(), true, "space inside value"),
        (
            "a=x ".into(),
            true,
            "trailing OWS is trimmed as list whitespace",
        ),
        ("a=b=c".into(), false, "= in value"),
        (format!("a={}", "x".repeat(256)), true, "value of 256"),
        (format!("a={}", "x".repeat(257)), false, "value of 257"),
        ("a=\u{7f}".into(), false, "control character"),
        ("novalue".into(), false, "no ="),
        // The cases of the W3C test harness (test/test.py) for keys and vendors.
        ("foo =1".into(), false, "space before ="),
        ("FOO=1".into(), false, "uppercase"),
        ("foo.bar=1".into(), false, ". in key"),
        ("foo@=1,bar=2".into(), false, "empty system id"),
        ("@foo=1,bar=2".into(), false, "empty tenant"),
        ("foo@@bar=1,bar=2".into(), false, "two @"),
        ("foo@bar@baz=1,bar=2".into(), false, "two @ apart"),
        (
            "foo=1 \t , \t bar=2, \t baz=3".into(),
            true,
            "OWS around members",
        ),
    ];
    for (value, ok, why) in cases {
        let got = TraceState::parse([value.as_str()]);
        assert_eq!(got.is_some(), ok, "{why}: {value:?}");
    }
    // Every allowed key and value character, kept exactly (the harness's
    // test_tracestate_all_allowed_characters), with and without a vendor.
    let key: String = ('a'..='z').chain('0'..='9').chain("_-*/".chars()).collect();
    let value: String = (0x20u8..=0x2b)
        .chain(0x2d..=0x3c)
        .chain(0x3e..=0x7e)
        .map(char::from)
        .collect();
    for key in [key.clone(), format!("{key}@a-z0-9_-*/")] {
        let state = TraceState::parse([format!("{key}={value}").as_str()]).expect("valid");
        assert_eq!(
            state.members().collect::<Vec<_>>(),
            [(key.as_str(), value.as_str())]
        );
    }
    // Headers combine in order; an empty one adds nothing; a key repeated across headers
    // makes the whole state invalid.
    let state = TraceState::parse(["foo=1,bar=2", "", "rojo=1,congo=2", "baz=3"]).unwrap();
    assert_eq!(
        state.header().as_deref(),
        Some("foo=1,bar=2,rojo=1,congo=2,baz=3")
    );
    assert!(TraceState::parse(["foo=1", "foo=1"]).is_none());
}

#[test]
fn baggage_grammar_and_limits() {
    let b = Baggage::parse(["userId=alice,serverNode=DF%2028,isProduction=false"]);
    assert_eq!(b.get("userId"), Some("alice"));
    assert_eq!(b.get("serverNode"), Some("DF 28"), "percent-decoded");
    assert_eq!(b.members().len(), 3);
    let b = Baggage::parse(["key1 = value1 ; prop1 ; propKey=propVal, key2=v2"]);
    assert_eq!(b.get("key1"), Some("value1"));
    assert_eq!(b.members()[0].properties, "prop1 ; propKey=propVal");
    // Malformed members are dropped, the rest kept.
    let b = Baggage::parse(["good=1,bad key=2,also\"bad=3,=4,fine=5,broken=%zz"]);
    let keys: Vec<&str> = b.members().iter().map(|m| m.key.as_str()).collect();
    assert_eq!(keys, ["good", "fine"]);
    // Several headers combine.
    let b = Baggage::parse(["a=1", "b=2"]);
    assert_eq!(b.header().as_deref(), Some("a=1,b=2"));
    // 64 members kept, the 65th dropped whole.
    let many = (0..70)
        .map(|i| format!("k{i}=v"))
        .collect::<Vec<_>>()
        .join(",");
    let b = Baggage::parse([many.as_str()]);
    assert_eq!(b.members().len(), 64);
    assert_eq!(b.members()[63].key, "k63");
    // 8192 bytes: a member that would cross the limit is dropped whole, never cut.
    let big = format!("a={},b={},c=small", "x".repeat(5000), "y".repeat(5000));
    let b = Baggage::parse([big.as_str()]);
    let keys: Vec<&str> = b.members().iter().map(|m| m.key.as_str()).collect();
    assert_eq!(keys, ["a", "c"]);
    assert!(b.header().unwrap().len() <= baggage::MAX_BYTES);
    assert!(b.get("b").is_none());
    // The cases of the W3C baggage test suite (test/test_baggage.py): `=` inside a value, OWS
    // around `=` and `;`, percent-encoded values, a member of exactly 8192 bytes, 512 small
    // members within 8192 bytes (64 of them kept).
    let b = Baggage::parse(["SomeKey=SomeValue=equals"]);
    assert_eq!(b.get("SomeKey"), Some("SomeValue=equals"));
    let b = Baggage::parse([
        "SomeKey \t = \t SomeValue \t ; \t SomePropKey=SomePropValue \t , \t SomeKey2 \t = \t SomeValue2",
    ]);
    assert_eq!(b.get("SomeKey"), Some("SomeValue"));
    assert_eq!(b.get("SomeKey2"), Some("SomeValue2"));
    assert_eq!(b.members()[0].properties, "SomePropKey=SomePropValue");
    let b = Baggage::parse(["SomeKey=%09%20%22%27%3B%3Dasdf%21%40%23%24%25%5E%26%2A%28%29"]);
    assert_eq!(b.get("SomeKey"), Some("\t \"';=asdf!@#$%^&*()"));
    let exact = format!("a={}", "0123456789".repeat(819));
    assert_eq!(exact.len(), 8192);
    let b = Baggage::parse([exact.as_str()]);
    assert_eq!(
        b.header().as_deref(),
        Some(exact.as_str()),
        "8192 bytes kept whole"
    );
    let small = (0..512)
        .map(|i| format!("{i:03}=0123456789a"))
        .collect::<Vec<_>>()
        .join(",");
    assert_eq!(Baggage::parse([small.as_str()]).members().len(), 64);
}

#[test]
fn b3_single_and_multi() {
    let p = Propagators::new([Format::B3, Format::B3Multi]);
    let got = p.extract(&headers(&[(
        "b3",
        &format!("{TRACE}-{SPAN}-1-05e3ac9a4f6e3b90"),
    )]));
    let parent = got.parent.unwrap();
    assert_eq!(parent.trace_id.to_string(), TRACE);
    assert!(parent.flags.sampled());
    let got = p.extract(&headers(&[("b3", &format!("a3ce929d0e0e4736-{SPAN}-0"))]));
    let parent = got.parent.unwrap();
    assert_eq!(
        parent.trace_id.to_string(),
        "0000000000000000a3ce929d0e0e4736",
        "64-bit ids are left-padded"
    );
    assert!(!parent.flags.sampled());
    assert_eq!(got.sampled, Some(false));
    // A sampling state alone: a decision without ids.
    for (state, decision) in [("0", false), ("1", true), ("d", true)] {
        let got = p.extract(&headers(&[("b3", state)]));
        assert_eq!(got.parent, None, "sampling only");
        assert_eq!(got.sampled, Some(decision), "b3: {state}");
    }
    // Ids without a sampling state: the decision is deferred to this service.
    let got = p.extract(&headers(&[("b3", &format!("{TRACE}-{SPAN}"))]));
    assert_eq!(got.parent.unwrap().trace_id.to_string(), TRACE);
    assert_eq!(got.sampled, None, "deferred");
    let got = p.extract(&headers(&[("x-b3-traceid", TRACE), ("x-b3-spanid", SPAN)]));
    assert!(got.parent.is_some());
    assert_eq!(got.sampled, None, "deferred (multi)");
    // W3C: the parent's flag.
    let w3c = Propagators::default().extract(&headers(&[(
        "traceparent",
        &format!("00-{TRACE}-{SPAN}-00"),
    )]));
    assert_eq!(w3c.sampled, Some(false));
    // A later format's parent replaces an earlier lone decision.
    let both = Propagators::new([Format::B3, Format::TraceContext]).extract(&headers(&[
        ("b3", "0"),
        ("traceparent", &format!("00-{TRACE}-{SPAN}-01")),
    ]));
    assert_eq!(both.sampled, Some(true));
    assert_eq!(
        p.extract(&headers(&[("b3", &format!("{TRACE}-{SPAN}-x"))]))
            .parent,
        None,
        "bad sampling state"
    );
    let got = p.extract(&headers(&[
        ("x-b3-traceid", TRACE),
        ("x-b3-spanid", SPAN),
        ("x-b3-sampled", "0"),
        ("x-b3-flags", "1"),
    ]));
    assert!(got.parent.unwrap().flags.sampled(), "debug implies sampled");
    assert_eq!(got.sampled, Some(true));
    assert!(got.debug);
    // Debug in the single header, with or without ids; only `d` is debug.
    for (b3, debug) in [
        (format!("{TRACE}-{SPAN}-d"), true),
        (format!("{TRACE}-{SPAN}-d-05e3ac9a4f6e3b90"), true),
        ("d".to_owned(), true),
        (format!("{TRACE}-{SPAN}-1"), false),
        ("1".to_owned(), false),
        (format!("{TRACE}-{SPAN}"), false),
    ] {
        let got = p.extract(&headers(&[("b3", &b3)]));
        assert_eq!(got.debug, debug, "b3: {b3}");
        let accept = debug || b3 == "1" || b3.ends_with("-1");
        assert_eq!(got.sampled.unwrap_or(false), accept, "b3: {b3}");
    }
    // A later format's parent replaces a lone debug decision, debug included.
    let both = Propagators::new([Format::B3, Format::TraceContext]).extract(&headers(&[
        ("b3", "d"),
        ("traceparent", &format!("00-{TRACE}-{SPAN}-00")),
    ]));
    assert_eq!((both.sampled, both.debug), (Some(false), false));
    // Injection writes every configured format.
    let mut out = HeaderMap::new();
    let all = Propagators::new([
        Format::TraceContext,
        Format::Baggage,
        Format::B3,
        Format::B3Multi,
    ]);
    let id = TraceId::from_hex(TRACE).unwrap();
    let span = SpanId::from_hex(SPAN).unwrap();
    let state = TraceState::parse(["a=1"]).unwrap();
    let bag = Baggage::parse(["k=v"]);
    all.inject(id, span, TraceFlags(1), &state, &bag, &mut out);
    assert_eq!(out["traceparent"], format!("00-{TRACE}-{SPAN}-01").as_str());
    assert_eq!(out["tracestate"], "a=1");
    assert_eq!(out["baggage"], "k=v");
    assert_eq!(out["b3"], format!("{TRACE}-{SPAN}-1").as_str());
    assert_eq!(out["x-b3-sampled"], "1");
    // And what was injected extracts to the same ids.
    let back = Propagators::default().extract(&out);
    assert_eq!(back.parent.unwrap().parent_id, span);
    assert_eq!(back.baggage.get("k"), Some("v"));
    // Debug replaces the sampling state in both B3 formats (and the header it replaces goes).
    all.inject_debug(id, span, TraceFlags(1), &state, &bag, &mut out);
    assert_eq!(out["b3"], format!("{TRACE}-{SPAN}-d").as_str());
    assert_eq!(out["x-b3-flags"], "1");
    assert!(!out.contains_key("x-b3-sampled"), "debug implies accept");
    assert_eq!(out["traceparent"], format!("00-{TRACE}-{SPAN}-01").as_str());
    let back = Propagators::new([Format::B3Multi]).extract(&out);
    assert!(back.debug);
    all.inject(id, span, TraceFlags(1), &state, &bag, &mut out);
    assert_eq!(out["x-b3-sampled"], "1");
    assert!(!out.contains_key("x-b3-flags"));
    assert!(!Propagators::new([Format::B3]).extract(&out).debug);
}

#[test]
fn otel_propagators_values() {
    let (p, unknown) = Propagators::parse("tracecontext, baggage,b3multi,xray,none");
    assert_eq!(
        p.formats(),
        [Format::TraceContext, Format::Baggage, Format::B3Multi]
    );
    assert_eq!(unknown, ["xray"]);
    let (p, _) = Propagators::parse("none");
    assert!(p.formats().is_empty());
    let valid = format!("00-{TRACE}-{SPAN}-01");
    assert_eq!(p.extract(&headers(&[("traceparent", &valid)])).parent, None);
    assert_eq!(
        Propagators::default().formats(),
        [Format::TraceContext, Format::Baggage]
    );
}

#[cfg(feature = "otel")]
#[test]
fn sampler_names_and_arguments() {
    use super::Sampler;
    assert_eq!(Sampler::parse("always_on", None), Some(Sampler::AlwaysOn));
    assert_eq!(Sampler::parse("always_off", None), Some(Sampler::AlwaysOff));
    assert_eq!(
        Sampler::parse("traceidratio", Some("0.25")),
        Some(Sampler::TraceIdRatio(0.25))
    );
    assert_eq!(
        Sampler::parse("parentbased_traceidratio", Some(" 0.5 ")),
        Some(Sampler::ParentBasedTraceIdRatio(0.5))
    );
    // An argument out of range or unreadable falls back to 1.0, as the specification says.
    assert_eq!(
        Sampler::parse("traceidratio", Some("7")),
        Some(Sampler::TraceIdRatio(1.0))
    );
    assert_eq!(
        Sampler::parse("traceidratio", None),
        Some(Sampler::TraceIdRatio(1.0))
    );
    assert_eq!(
        Sampler::parse("parentbased_always_on", None),
        Some(Sampler::ParentBasedAlwaysOn)
    );
    assert_eq!(Sampler::parse("jaeger_remote", None), None);
}

/// Without an exporter the server span is not built, and the sampler's decision is made
/// without the SDK: it must be the SDK's own, for every sampler and caller.
#[cfg(feature = "otel")]
#[test]
fn decisions_without_the_sdk_are_the_sdks() {
    use opentelemetry::trace::{
        SpanContext, SpanKind, TraceContextExt, TraceFlags as OtelFlags, TraceId as OtelTraceId,
        TraceState as OtelTraceState,
    };
    use opentelemetry_sdk::trace::{SamplingDecision, ShouldSample};
    let mut rng = fastrand::Rng::with_seed(11);
    let samplers = [
        Sampler::AlwaysOn,
        Sampler::AlwaysOff,
        Sampler::TraceIdRatio(0.3),
        Sampler::ParentBasedAlwaysOn,
        Sampler::ParentBasedAlwaysOff,
        Sampler::ParentBasedTraceIdRatio(0.3),
    ];
    let mut sampled_roots = 0;
    for _ in 0..500 {
        let trace_id = OtelTraceId::from_bytes(rng.u128(1..).to_be_bytes());
        for caller in [None, Some(true), Some(false)] {
            let parent = caller.map(|sampled| {
                SpanContext::new(
                    trace_id,
                    opentelemetry::trace::SpanId::from_bytes(rng.u64(1..).to_be_bytes()),
                    if sampled {
                        OtelFlags::SAMPLED
                    } else {
                        OtelFlags::default()
                    },
                    true,
                    OtelTraceState::default(),
                )
            });
            let cx = parent
                .clone()
                .map(|p| opentelemetry::Context::new().with_remote_span_context(p));
            for s in samplers {
                let sdk = s
                    .sdk()
                    .should_sample(cx.as_ref(), trace_id, "GET /", &SpanKind::Server, &[], &[])
                    .decision
                    == SamplingDecision::RecordAndSample;
                let ours = s.decide(parent.as_ref().map(SpanContext::is_sampled), trace_id);
                assert_eq!(ours, sdk, "{s:?}, caller {caller:?}");
                if caller.is_none() && s == Sampler::TraceIdRatio(0.3) && ours {
                    sampled_roots += 1;
                }
            }
        }
    }
    // The ratio really varies with the trace id (about 30% of 500).
    assert!((100..200).contains(&sampled_roots), "{sampled_roots}");
}

/// The `tracing` bridge makes OpenTelemetry spans only when something is exported.
#[cfg(feature = "otel")]
#[test]
fn the_bridge_makes_spans_only_when_exporting() {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    use tracing_subscriber::layer::SubscriberExt;
    for (exporter, bridged) in [(Exporter::None, false), (Exporter::Console, true)] {
        let tracing = TraceConfig::from_env("bridge").exporter(exporter).install();
        assert_eq!(tracing.is_exporting(), bridged);
        let sub = tracing_subscriber::registry().with(tracing.otel_layer());
        let valid = tracing::subscriber::with_default(sub, || {
            let span = tracing::info_span!("work");
            let _e = span.enter();
            span.context().span().span_context().is_valid()
        });
        assert_eq!(valid, bridged, "{exporter:?}");
        tracing.shutdown(std::time::Duration::from_secs(1));
    }
}

/// The processing model's rules for `traceparent`, written plainly (a byte loop, the standard
/// library's radix parsing), for the parser's vectorised hex decoding to be checked against.
fn traceparent_model(value: &[u8]) -> Option<(u8, [u8; 16], [u8; 8], u8)> {
    let ows = |c: &u8| *c == b' ' || *c == b'\t';
    let start = value.iter().position(|c| !ows(c))?;
    let end = value.iter().rposition(|c| !ows(c))? + 1;
    let v = &value[start..end];
    if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let lower_hex = |s: &[u8]| {
        s.iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
    };
    let byte = |s: &[u8]| u8::from_str_radix(std::str::from_utf8(s).ok()?, 16).ok();
    let fields = [&v[0..2], &v[3..35], &v[36..52], &v[53..55]];
    if !fields.iter().all(|f| lower_hex(f)) {
        return None;
    }
    let version = byte(&v[0..2])?;
    let flags = byte(&v[53..55])?;
    if version == 0xff || (version == 0 && v.len() != 55) || (v.len() > 55 && v[55] != b'-') {
        return None;
    }
    let mut trace = [0u8; 16];
    for (i, b) in trace.iter_mut().enumerate() {
        *b = byte(&v[3 + 2 * i..5 + 2 * i])?;
    }
    let mut span = [0u8; 8];
    for (i, b) in span.iter_mut().enumerate() {
        *b = byte(&v[36 + 2 * i..38 + 2 * i])?;
    }
    (trace != [0; 16] && span != [0; 8]).then_some((version, trace, span, flags))
}

mod props {
    use std::collections::HashSet;

    use proptest::prelude::*;

    use super::*;

    /// Bytes dense in the edges of `[0-9a-f]` and of the separators: what a hex check done
    /// sixteen bytes at a time, on unsigned and signed lanes, must tell apart.
    fn edgy() -> impl Strategy<Value = u8> {
        prop_oneof![
            4 => prop::sample::select(b"0123456789abcdef".to_vec()),
            1 => prop::sample::select(vec![
                b'/', b':', b'`', b'g', b'@', b'A', b'F', b'G', b'-', b' ', b'\t', 0x00, 0x7f,
                0x80, 0xb0, 0xe1, 0xff,
            ]),
        ]
    }

    proptest! {
            #![proptest_config(ProptestConfig { cases: 1000, .. ProptestConfig::default() })]

            /// `TraceParent::parse_bytes` agrees with the plain model on valid values and ones a
            /// byte or two away, anywhere (hex digits, the bytes around them, separators), with
            /// versions, zero ids, surrounding whitespace and extra fields.
            #[test]
            fn traceparent_agrees_with_the_plain_model(
                ids in any::<[u8; 25]>(),
                mutations in proptest::collection::vec((0..55usize, edgy()), 0..3),
                version in prop_oneof![Just(*b"00"), Just(*b"cc"), Just(*b"ff"), Just(*b"0a")],
                zero in prop_oneof![4 => Just(None), 1 => Just(Some(false)), 1 => Just(Some(true))],
                pad in prop_oneof![Just(""), Just(" "), Just("\t "), Just("x")],
                tail in prop_oneof![Just(&b""[..]), Just(&b"-what-ever"[..]), Just(&b"x"[..]), Just(&b"-"[..])],
            ) {
                // A valid value, then up to two bytes changed.
                let hex = |b: &[u8]| b.iter().map(|b| format!("{b:02x}")).collect::<String>();
                let mut head = format!(
                    "{}-{}-{}-{}",
                    std::str::from_utf8(&version).unwrap(),
                    hex(&ids[..16]),
                    hex(&ids[16..24]),
                    hex(&ids[24..]),
                )
                .into_bytes();
                match zero {
                    Some(false) => head[3..35].fill(b'0'),
                    Some(true) => head[36..52].fill(b'0'),
                    None => {}
                }
                for (at, b) in mutations {
                    head[at] = b;
                }
                let mut value = pad.as_bytes().to_vec();
                value.extend_from_slice(&head);
                value.extend_from_slice(tail);
                value.extend_from_slice(pad.as_bytes());
                let got = TraceParent::parse_bytes(&value)
                    .map(|p| (p.version, p.trace_id.0, p.parent_id.0, p.flags.0));
                prop_assert_eq!(got, traceparent_model(&value), "{:?}", String::from_utf8_lossy(&value));
            }

            /// Ids written and read back: the vectorised encoding is the plain one, and what
            /// `header` writes parses to what it was given (flags beyond the defined ones left
            /// out).
            #[test]
            fn ids_round_trip(trace in any::<[u8; 16]>(), span in any::<[u8; 8]>(), flags in any::<u8>()) {
                let plain = |b: &[u8]| b.iter().map(|b| format!("{b:02x}")).collect::<String>();
                let (t, s) = (TraceId(trace).hex(), SpanId(span).hex());
                prop_assert_eq!(t.as_str(), plain(&trace));
                prop_assert_eq!(s.as_str(), plain(&span));
                prop_assume!(trace != [0; 16] && span != [0; 8]);
                prop_assert_eq!(TraceId::from_hex(&plain(&trace)), Some(TraceId(trace)));
                prop_assert_eq!(SpanId::from_hex(&plain(&span)), Some(SpanId(span)));
                let header = TraceParent::header(TraceId(trace), SpanId(span), TraceFlags(flags));
                let back = TraceParent::parse(&header).expect("a valid traceparent");
                prop_assert_eq!(back.version, 0);
                prop_assert_eq!((back.trace_id, back.parent_id), (TraceId(trace), SpanId(span)));
                prop_assert_eq!(back.flags.0, flags & 0x03);
            }

    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, .. ProptestConfig::default() })]

        /// Whatever `tracestate` a caller sends, what is kept is within the limits, its keys
        /// unique, and sent on as a value that parses to the same members.
        #[test]
        fn tracestate_kept_is_valid_and_sent_on_unchanged(
            values in proptest::collection::vec(
                proptest::collection::vec(
                    (
                        prop::sample::select(vec![
                            "a", "b", "rojo", "congo", "t@sys", "0t@sys", "T", "a b", "", "@s",
                            "k*/_-", "x@", "a@b@c",
                        ]),
                        prop::sample::select(vec![
                            "v", "00f067aa0ba902b7", "t61rcWkgMzE", "with space", "trailing ",
                            "", "a=b", "\u{7f}", "~!",
                        ]),
                        0..40u8,
                    ),
                    0..40,
                ),
                1..3,
            ),
        ) {
            let headers: Vec<String> = values
                .iter()
                .map(|members| {
                    members
                        .iter()
                        .map(|(k, v, n)| format!("{k}{n}={v}"))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .collect();
            if let Some(state) = TraceState::parse(headers.iter().map(String::as_str)) {
                let members: Vec<(&str, &str)> = state.members().collect();
                prop_assert!(members.len() <= tracestate::MAX_MEMBERS);
                let keys: HashSet<&str> = members.iter().map(|(k, _)| *k).collect();
                prop_assert_eq!(keys.len(), members.len());
                match state.header() {
                    Some(sent) => {
                        prop_assert_eq!(TraceState::parse([sent.as_str()]), Some(state.clone()))
                    }
                    None => prop_assert!(members.is_empty()),
                }
            }
        }

        /// Whatever `baggage` a caller sends, what is kept is within the limits (members and
        /// bytes, never a member cut), and sent on as a value that parses to the same members.
        #[test]
        fn baggage_kept_is_within_limits_and_sent_on_unchanged(
            members in proptest::collection::vec(
                (
                    prop::sample::select(vec!["k", "userId", "a.b", "x!#$&*+^_|~-", "", " ", "\"q\"", "a b"]),
                    prop::sample::select(vec![
                        "v".to_owned(), "alice".to_owned(), "DF%2028".to_owned(), "%zz".to_owned(),
                        "%C3%A9".to_owned(), "%FF".to_owned(), "a=b".to_owned(), "a b".to_owned(),
                        "x".repeat(300), "y".repeat(2000),
                    ]),
                    prop::sample::select(vec!["", ";p", ";p=1", ";p=1;q", ";=", "; ;"]),
                ),
                0..90,
            ),
        ) {
            let value = members
                .iter()
                .map(|(k, v, p)| format!("{k}={v}{p}"))
                .collect::<Vec<_>>()
                .join(",");
            let kept = Baggage::parse([value.as_str()]);
            prop_assert!(kept.members().len() <= baggage::MAX_MEMBERS);
            match kept.header() {
                Some(sent) => {
                    prop_assert!(sent.len() <= baggage::MAX_BYTES, "{}", sent.len());
                    prop_assert_eq!(Baggage::parse([sent.as_str()]), kept);
                }
                None => prop_assert!(kept.is_empty()),
            }
        }
    }
}

/// `OTEL_TRACES_SAMPLER` and its argument, the batch settings and `OTEL_SDK_DISABLED`: what
/// is not understood falls back to the specification's default and says so.
#[cfg(feature = "otel")]
#[test]
fn settings_not_understood_are_warned_about() {
    for (name, arg, sampler, warned) in [
        (None, None, Sampler::ParentBasedAlwaysOn, false),
        (None, Some("0.5"), Sampler::ParentBasedAlwaysOn, false),
        (Some("always_off"), Some("0.5"), Sampler::AlwaysOff, false),
        (
            Some("traceidratio"),
            Some("0.25"),
            Sampler::TraceIdRatio(0.25),
            false,
        ),
        (
            Some("traceidratio"),
            None,
            Sampler::TraceIdRatio(1.0),
            false,
        ),
        (
            Some("traceidratio"),
            Some("1.5"),
            Sampler::TraceIdRatio(1.0),
            true,
        ),
        (
            Some("parentbased_traceidratio"),
            Some("half"),
            Sampler::ParentBasedTraceIdRatio(1.0),
            true,
        ),
        (
            Some("parentbased_traceidratio"),
            Some("NaN"),
            Sampler::ParentBasedTraceIdRatio(1.0),
            true,
        ),
        (Some("sometimes"), None, Sampler::ParentBasedAlwaysOn, true),
    ] {
        let (got, warning) = Sampler::from_env_values(name, arg);
        assert_eq!(got, sampler, "{name:?} {arg:?}");
        assert_eq!(warning.is_some(), warned, "{name:?} {arg:?}: {warning:?}");
    }
    // The batch settings: whole numbers, else the default, said so.
    for (value, n, warned) in [
        (None, None, false),
        (Some(" 512 "), Some(512), false),
        (Some("5s"), None, true),
        (Some("-1"), None, true),
    ] {
        let mut warnings = Vec::new();
        let got = config::number(
            "OTEL_BSP_MAX_QUEUE_SIZE",
            value.map(str::to_owned),
            &mut warnings,
        );
        assert_eq!(got, n, "{value:?}");
        assert_eq!(
            warnings.len(),
            usize::from(warned),
            "{value:?}: {warnings:?}"
        );
    }
    // Booleans: `true` in any case; anything but `false` warned about.
    for (value, on, warned) in [
        (None, false, false),
        (Some("TRUE"), true, false),
        (Some(" false "), false, false),
        (Some("1"), false, true),
        (Some("yes"), false, true),
    ] {
        let mut warnings = Vec::new();
        let got = config::boolean("OTEL_SDK_DISABLED", value.map(str::to_owned), &mut warnings);
        assert_eq!(got, on, "{value:?}");
        assert_eq!(
            warnings.len(),
            usize::from(warned),
            "{value:?}: {warnings:?}"
        );
    }
}
