//! JSON bytes ⇄ Python objects: exact round trips, strict input, the output rules and
//! the output limit.

use proptest::prelude::*;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use runtime_python::convert::{json_to_py, py_to_json, OutputError};
use serde_json::Value;

fn py_eval<'py>(py: Python<'py>, expr: &str) -> Bound<'py, PyAny> {
    let code = std::ffi::CString::new(expr).unwrap();
    let globals = PyDict::new(py);
    py.run(
        c"import collections, enum, fractions, json, sys\nclass Color(enum.IntEnum):\n    RED = 1\n",
        Some(&globals),
        None,
    )
    .unwrap();
    py.eval(&code, Some(&globals), None).unwrap()
}

fn write(obj: &Bound<'_, PyAny>) -> Result<String, OutputError> {
    let mut out = Vec::new();
    py_to_json(obj, &mut out, usize::MAX)?;
    Ok(String::from_utf8(out).expect("py_to_json writes UTF-8"))
}

/// Bytes -> Python -> bytes.
fn round_trip(json: &str) -> String {
    Python::attach(|py| write(&json_to_py(py, json.as_bytes()).unwrap()).unwrap())
}

/// The message of the ValueError that parsing `json` gives.
fn parse_error(json: &[u8]) -> String {
    Python::attach(|py| {
        let err = json_to_py(py, json).expect_err("invalid JSON parsed");
        assert!(err.is_instance_of::<PyValueError>(py), "{err}");
        err.value(py).to_string()
    })
}

fn repr(obj: &Bound<'_, PyAny>) -> String {
    obj.repr().unwrap().to_string()
}

#[test]
fn canonical_json_round_trips_byte_for_byte() {
    for json in [
        r#"{"input":{"b":1,"a":2,"c":{"z":[],"y":{}}},"metadata":{"k":"v"}}"#,
        "[1,-1,0,9223372036854775807,-9223372036854775808,18446744073709551615]",
        "[18446744073709551616,-18446744073709551617,-9223372036854775809,123456789012345678901234567890123456789012345678901234567890]",
        "[0.1,-2.5,1e-7,1.7976931348623157e308,5e-324,100000.0,1.0,-0.0,1e300,1e16,123.456]",
        r#"["","é","日本語","😀","\u0000\u001f\b\f\n\r\t","line\nbreak","\"quoted\" \\ slash","a/b","\u007f"]"#,
        "[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]",
        r#"{"z":1,"a":2,"m":{"b":[{"y":null,"x":true}],"a":false}}"#,
        r#""just a string""#,
        "42",
        "-0.5",
        "null",
        "true",
        "false",
        "[]",
        "{}",
        "[[],{},[{}],{\"\":[]}]",
    ] {
        // \u007f is written back raw: only what JSON requires is escaped.
        let expected = json.replace(r"\u007f", "\u{7f}");
        assert_eq!(round_trip(json), expected, "{json}");
    }
}

#[test]
fn other_spellings_come_back_compact() {
    for (json, expected) in [
        (
            " \t\r\n{ \"a\" : [ 1 , 2 ] , \"b\" : { } }\n ",
            r#"{"a":[1,2],"b":{}}"#,
        ),
        (r#""\u00e9\/\u0041\b\u001F""#, r#""é/A\b\u001f""#),
        (r#""\ud83d\ude00 \uD834\uDD1E""#, r#""😀 𝄞""#),
        // A repeated key keeps its first place and its last value, as with json.loads.
        (r#"{"a":1,"b":2,"a":3}"#, r#"{"a":3,"b":2}"#),
        ("-0", "0"),
        (
            "[1E5,1.0e-7,2.50,1e+2,1E-0,0.0e0,10e-1]",
            "[100000.0,1e-7,2.5,100.0,1.0,0.0,1.0]",
        ),
    ] {
        assert_eq!(round_trip(json), expected, "{json}");
    }
}

#[test]
fn floats_keep_their_value_whatever_their_spelling() {
    let spellings = [
        "0.1",
        "1E5",
        "1e5",
        "1.0e-7",
        "2.50",
        "1e308",
        "0.30000000000000004",
        "5e-324",
        "2.2250738585072014e-308",
        "4.9406564584124654e-324",
        "9007199254740993.0",
        "1.7976931348623157e308",
        "-1.5e-10",
        "123456789.123456789e-5",
        "0.0",
        "-0.0",
        // Halfway cases: correct rounding, not a naive multiply.
        "9007199254740993e0",
        "2.4703282292062328e-324",
    ];
    Python::attach(|py| {
        for text in spellings {
            let expected: f64 = text.parse().unwrap();
            let obj = json_to_py(py, text.as_bytes()).unwrap();
            assert_eq!(
                obj.get_type().name().unwrap().to_string(),
                "float",
                "{text}"
            );
            let got: f64 = obj.extract().unwrap();
            assert_eq!(got.to_bits(), expected.to_bits(), "{text}");
            // Python's own float() agrees.
            let python: f64 = py_eval(py, &format!("float('{text}')")).extract().unwrap();
            assert_eq!(got.to_bits(), python.to_bits(), "{text}");
            let written = write(&obj).unwrap();
            let back: f64 = written.parse().unwrap();
            assert_eq!(back.to_bits(), expected.to_bits(), "{text} -> {written}");
        }
        // Out of range is inf, as with json.loads; inf cannot be written back.
        let inf = json_to_py(py, b"[1e400,-1e400,1e-400]").unwrap();
        assert_eq!(repr(&inf), "[inf, -inf, 0.0]");
        assert!(write(&inf).is_err());
    });
}

#[test]
fn floats_are_written_as_floats() {
    Python::attach(|py| {
        for (expr, expected) in [
            ("1.0", "1.0"),
            ("-1.0", "-1.0"),
            ("1e300", "1e300"),
            ("1e16", "1e16"),
            ("1e-7", "1e-7"),
            ("0.1 + 0.2", "0.30000000000000004"),
            ("-0.0", "-0.0"),
            ("5e-324", "5e-324"),
            ("float(2**53)", "9007199254740992.0"),
        ] {
            assert_eq!(write(&py_eval(py, expr)).unwrap(), expected, "{expr}");
        }
    });
}

#[test]
fn big_ints_are_python_ints_with_every_digit() {
    Python::attach(|py| {
        let obj = json_to_py(
            py,
            br#"{"big": 340282366920938463463374607431768211457, "neg": -18446744073709551616, "u64": 18446744073709551615, "i64": -9223372036854775808, "max18": 999999999999999999}"#,
        )
        .unwrap();
        for (key, digits) in [
            ("big", "340282366920938463463374607431768211457"),
            ("neg", "-18446744073709551616"),
            ("u64", "18446744073709551615"),
            ("i64", "-9223372036854775808"),
            ("max18", "999999999999999999"),
        ] {
            let item = obj.get_item(key).unwrap();
            assert_eq!(item.get_type().name().unwrap().to_string(), "int");
            assert_eq!(item.str().unwrap().to_string(), digits);
        }
        // And Python-made big ints come back exact.
        let made = py_eval(py, "[2**200, -(3**90), 10**30 + 1, 2**63, -(2**63) - 1]");
        assert_eq!(
            write(&made).unwrap(),
            format!(
                "[{},{},{},{},{}]",
                "1606938044258990275541962092341162602522202993782792835301376",
                "-8727963568087712425891397479476727340041449",
                "1000000000000000000000000000001",
                "9223372036854775808",
                "-9223372036854775809",
            )
        );
    });
}

#[test]
fn objects_equal_what_json_loads_makes() {
    let documents = [
        r#"{"input": {"b": 1, "a": [1.5, -0.0, 1e400, 12345678901234567890123]}, "metadata": {}}"#,
        r#"{"a": 1, "b": 2, "a": {"c": 3}, "b": null}"#,
        r#"["", "é\u00e9\/", "\ud83d\ude00", "\ud800", "\udc00\ud800\udc00x", "\ud800\u0041", "\ud800\\"]"#,
        r#"[true, false, null, 0, -0, 1E5, 0.1, 1e-320, 9007199254740993]"#,
        r#"{"": {"": [[], {}]}, "k\u0000": "\t"}"#,
        r#"  "top-level string"  "#,
    ];
    Python::attach(|py| {
        let loads = py_eval(py, "json.loads");
        let same = py_eval(py, "lambda a, b: a == b and repr(a) == repr(b)");
        for doc in documents {
            let ours = json_to_py(py, doc.as_bytes()).unwrap();
            let theirs = loads.call1((doc,)).unwrap();
            // repr also compares key order, float spelling, int vs float, lone surrogates.
            assert!(
                same.call1((&ours, &theirs)).unwrap().is_truthy().unwrap(),
                "{doc}: {} != {}",
                repr(&ours),
                repr(&theirs)
            );
        }
    });
}

#[test]
fn keys_are_kept_from_one_document_to_the_next() {
    // The same key in the next request is the same str; keys that share a prefix, or
    // the slot of a key seen before, are still their own.
    Python::attach(|py| {
        let first = json_to_py(py, br#"{"message": 1, "k": 0}"#).unwrap();
        let doc = br#"{"messag": 2, "message": 3, "messages": 4, "k": 5, "K": 6}"#;
        let next = json_to_py(py, doc).unwrap();
        fn keys<'py>(obj: &Bound<'py, PyAny>) -> Vec<Bound<'py, PyAny>> {
            obj.try_iter().unwrap().map(Result::unwrap).collect()
        }
        let (a, b) = (keys(&first), keys(&next));
        assert!(a[0].is(&b[1]), "\"message\" was made again");
        assert!(a[1].is(&b[3]), "\"k\" was made again");
        let theirs = py_eval(py, "json.loads")
            .call1((std::str::from_utf8(doc).unwrap(),))
            .unwrap();
        assert_eq!(repr(&next), repr(&theirs));
    });
}

#[test]
fn repeated_and_colliding_keys_stay_right() {
    // Keys are made once per spelling: many keys (more than any small memo holds), in
    // shifting order, long ones, non-ASCII ones and escaped spellings of the same key.
    let mut doc = String::from("[");
    for record in 0..50 {
        let mut keys: Vec<String> = (0..100).map(|k| format!("k{k}")).collect();
        keys.rotate_left(record * 7 % 100);
        let fields: Vec<String> = keys.iter().map(|k| format!(r#""{k}":{record}"#)).collect();
        doc.push_str(&format!("{{{}}},", fields.join(",")));
    }
    doc.push_str(&format!(
        r#"{{"{long}":1,"{long}x":2,"{long}":3}},"#,
        long = "y".repeat(40)
    ));
    doc.push_str(r#"{"a":1,"\u0061":2,"é":3,"\u00e9":4,"e\u0301":5,"a":6}]"#);
    Python::attach(|py| {
        let ours = json_to_py(py, doc.as_bytes()).unwrap();
        let theirs = py_eval(py, "json.loads").call1((doc.as_str(),)).unwrap();
        assert_eq!(repr(&ours), repr(&theirs));
        assert!(ours.eq(&theirs).unwrap());
    });
}

#[test]
fn a_lone_surrogate_escape_becomes_a_str_holding_it() {
    Python::attach(|py| {
        let obj = json_to_py(py, br#"["\ud800", "\udfff!", "\udbff\udfff"]"#).unwrap();
        let codes = py_eval(py, "lambda l: [[ord(c) for c in s] for s in l]")
            .call1((&obj,))
            .unwrap();
        assert_eq!(repr(&codes), "[[55296], [57343, 33], [1114111]]");
        // It is not valid Unicode, so it cannot be written back out.
        let err = write(&obj).unwrap_err();
        assert_eq!(
            err.to_string(),
            r"str '\ud800' is not valid Unicode (it has a lone surrogate) (at $[0] in the return value)"
        );
    });
}

#[test]
fn invalid_json_is_a_value_error_with_the_byte_offset() {
    let mut wrong = Vec::new();
    for (json, expected) in [
        (
            &b""[..],
            "invalid JSON at byte 0: unexpected end, expected a value",
        ),
        (
            b"   ",
            "invalid JSON at byte 3: unexpected end, expected a value",
        ),
        (
            b"[1,2",
            "invalid JSON at byte 4: unexpected end, expected ',' or ']'",
        ),
        (
            b"{\"a\":1",
            "invalid JSON at byte 6: unexpected end, expected ',' or '}'",
        ),
        (
            b"{\"a\"",
            "invalid JSON at byte 4: unexpected end, expected ':'",
        ),
        (b"\"abc", "invalid JSON at byte 4: unterminated string"),
        (
            b"\"abc\\",
            "invalid JSON at byte 5: unexpected end, expected an escape (one of \"\\/bfnrtu)",
        ),
        (
            b"[1] x",
            "invalid JSON at byte 4: unexpected 'x', expected the end of the document",
        ),
        (
            b"{} {}",
            "invalid JSON at byte 3: unexpected '{', expected the end of the document",
        ),
        (
            b"1 2",
            "invalid JSON at byte 2: unexpected '2', expected the end of the document",
        ),
        (
            b"[1,]",
            "invalid JSON at byte 3: unexpected ']', expected a value",
        ),
        (
            b"[1 2]",
            "invalid JSON at byte 3: unexpected '2', expected ',' or ']'",
        ),
        (
            b"{\"a\":1,}",
            "invalid JSON at byte 7: unexpected '}', expected '\"' (a key)",
        ),
        (
            b"{a:1}",
            "invalid JSON at byte 1: unexpected 'a', expected '\"' (a key)",
        ),
        (
            b"{\"a\" 1}",
            "invalid JSON at byte 5: unexpected '1', expected ':'",
        ),
        (
            b"{1:2}",
            "invalid JSON at byte 1: unexpected '1', expected '\"' (a key)",
        ),
        (
            b"'a'",
            "invalid JSON at byte 0: unexpected ''', expected a value",
        ),
        (
            b"\"\\x\"",
            "invalid JSON at byte 2: unexpected 'x', expected an escape (one of \"\\/bfnrtu)",
        ),
        (
            b"\"\\U0041\"",
            "invalid JSON at byte 2: unexpected 'U', expected an escape (one of \"\\/bfnrtu)",
        ),
        (
            b"\"\\u12G4\"",
            "invalid JSON at byte 5: unexpected 'G', expected a hex digit (\\u takes four)",
        ),
        (
            b"\"\\u12\"",
            "invalid JSON at byte 5: unexpected '\"', expected a hex digit (\\u takes four)",
        ),
        (
            b"\"\\ud800\\u\"",
            "invalid JSON at byte 9: unexpected '\"', expected a hex digit (\\u takes four)",
        ),
        (b"01", "invalid JSON at byte 1: leading zero in a number"),
        (b"-01", "invalid JSON at byte 2: leading zero in a number"),
        (b"00.5", "invalid JSON at byte 1: leading zero in a number"),
        (
            b"1.",
            "invalid JSON at byte 2: unexpected end, expected a digit after '.'",
        ),
        (
            b"1.e5",
            "invalid JSON at byte 2: unexpected 'e', expected a digit after '.'",
        ),
        (
            b".5",
            "invalid JSON at byte 0: unexpected '.', expected a value",
        ),
        (
            b"1e",
            "invalid JSON at byte 2: unexpected end, expected a digit in the exponent",
        ),
        (
            b"1e+",
            "invalid JSON at byte 3: unexpected end, expected a digit in the exponent",
        ),
        (
            b"+1",
            "invalid JSON at byte 0: unexpected '+', expected a value",
        ),
        (
            b"-",
            "invalid JSON at byte 1: unexpected end, expected a digit",
        ),
        (
            b"- 1",
            "invalid JSON at byte 1: unexpected ' ', expected a digit",
        ),
        (
            b"0x10",
            "invalid JSON at byte 1: unexpected 'x', expected the end of the document",
        ),
        (
            b"NaN",
            "invalid JSON at byte 0: unexpected 'N', expected a value",
        ),
        (
            b"[Infinity]",
            "invalid JSON at byte 1: unexpected 'I', expected a value",
        ),
        (
            b"-Infinity",
            "invalid JSON at byte 1: unexpected 'I', expected a digit",
        ),
        (
            b"tru",
            "invalid JSON at byte 3: unexpected end, expected 'true'",
        ),
        (
            b"nul",
            "invalid JSON at byte 3: unexpected end, expected 'null'",
        ),
        (
            b"fals3",
            "invalid JSON at byte 4: unexpected '3', expected 'false'",
        ),
        (
            b"True",
            "invalid JSON at byte 0: unexpected 'T', expected a value",
        ),
        (
            b"nullx",
            "invalid JSON at byte 4: unexpected 'x', expected the end of the document",
        ),
        (
            b"\"a\tb\"",
            "invalid JSON at byte 2: control character U+0009 in a string (it must be escaped)",
        ),
        (
            b"\"a\nb\"",
            "invalid JSON at byte 2: control character U+000A in a string (it must be escaped)",
        ),
        (
            b"\"\x00\"",
            "invalid JSON at byte 1: control character U+0000 in a string (it must be escaped)",
        ),
        (
            b"\"\\n\x1f\"",
            "invalid JSON at byte 3: control character U+001F in a string (it must be escaped)",
        ),
        (
            b"\"\xff\"",
            "invalid JSON at byte 1: invalid UTF-8 in a string",
        ),
        (
            b"\"ab\xc3\"",
            "invalid JSON at byte 3: invalid UTF-8 in a string",
        ),
        (
            b"\"\\n\xed\xa0\x80\"",
            "invalid JSON at byte 3: invalid UTF-8 in a string",
        ),
        (
            b"{\"\xc0\xaf\":1}",
            "invalid JSON at byte 2: invalid UTF-8 in a string",
        ),
        (
            b"[\xff]",
            "invalid JSON at byte 1: unexpected byte 0xff, expected a value",
        ),
        (
            b"\xef\xbb\xbf{}",
            "invalid JSON at byte 0: unexpected byte 0xef, expected a value",
        ),
        (
            b"\x00",
            "invalid JSON at byte 0: unexpected byte 0x00, expected a value",
        ),
        (
            b"[1]\x00",
            "invalid JSON at byte 3: unexpected byte 0x00, expected the end of the document",
        ),
        (
            b"\x0c1",
            "invalid JSON at byte 0: unexpected byte 0x0c, expected a value",
        ),
    ] {
        let got = parse_error(json);
        if got != expected {
            wrong.push(format!("{:?}: {got}", String::from_utf8_lossy(json)));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn every_truncation_of_a_document_is_an_error() {
    let doc = br#"{"a": [1, -2.5e3, "x\u00e9\n\ud83d\ude00", true, false, null, {"b": {}}], "c": 123456789012345678901234}"#;
    Python::attach(|py| {
        assert!(json_to_py(py, doc).is_ok());
        for end in 0..doc.len() {
            let cut = &doc[..end];
            let err = json_to_py(py, cut).expect_err(&String::from_utf8_lossy(cut));
            assert!(err.is_instance_of::<PyValueError>(py), "{err}");
        }
    });
}

#[test]
fn nesting_is_limited_to_128_levels() {
    let nested = |open: &str, close: &str, levels: usize| {
        format!("{}1{}", open.repeat(levels), close.repeat(levels))
    };
    Python::attach(|py| {
        assert!(json_to_py(py, nested("[", "]", 128).as_bytes()).is_ok());
        assert!(json_to_py(py, nested(r#"{"a":"#, "}", 128).as_bytes()).is_ok());
    });
    assert_eq!(
        parse_error(nested("[", "]", 129).as_bytes()),
        "invalid JSON at byte 128: nested deeper than 128 levels"
    );
    assert_eq!(
        parse_error(nested(r#"{"a":"#, "}", 129).as_bytes()),
        "invalid JSON at byte 640: nested deeper than 128 levels"
    );
}

#[test]
fn a_100k_level_body_fails_cleanly() {
    for body in [
        "[".repeat(100_000),
        format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)),
        r#"{"a":"#.repeat(100_000),
        "[{\"a\":".repeat(50_000),
    ] {
        let msg = parse_error(body.as_bytes());
        assert!(msg.contains("nested deeper than 128 levels"), "{msg}");
    }
}

#[test]
fn strings_are_escaped_as_serde_json_escapes_them() {
    Python::attach(|py| {
        let s = py_eval(
            py,
            r#"''.join(map(chr, range(0x80))) + 'é日本😀\u2028\u2029\ufeff\uffff\U0010ffff'"#,
        );
        let text: String = s.extract().unwrap();
        assert_eq!(write(&s).unwrap(), serde_json::to_string(&text).unwrap());
    });
}

#[test]
fn python_types_map_to_json_types() {
    Python::attach(|py| {
        let obj = json_to_py(
            py,
            br#"{"f": 1.5, "i": 1, "s": "x", "l": [], "d": {}, "n": null, "b": true}"#,
        )
        .unwrap();
        let types = py_eval(py, "lambda d: {k: type(v).__name__ for k, v in d.items()}")
            .call1((obj,))
            .unwrap();
        assert_eq!(
            write(&types).unwrap(),
            r#"{"f":"float","i":"int","s":"str","l":"list","d":"dict","n":"NoneType","b":"bool"}"#
        );
    });
}

#[test]
fn output_accepts_tuples_subclasses_and_keeps_order() {
    Python::attach(|py| {
        let obj = py_eval(
            py,
            "{'t': (1, 'a'), 'b': True, 'f': False, 'e': Color.RED, \
              'o': collections.OrderedDict([('z', 1), ('a', 2)]), 'n': None, 'x': 0.25, \
              'moved': (lambda d: (d.move_to_end('z'), d)[1])(collections.OrderedDict([('z', 1), ('a', 2)])), \
              'dd': collections.defaultdict(list, {'k': [1]}), \
              'nt': collections.namedtuple('P', 'x y')(1, 2), 'big': Color.RED * 2**70}",
        );
        assert_eq!(
            write(&obj).unwrap(),
            r#"{"t":[1,"a"],"b":true,"f":false,"e":1,"o":{"z":1,"a":2},"n":null,"x":0.25,"moved":{"a":2,"z":1},"dd":{"k":[1]},"nt":[1,2],"big":1180591620717411303424}"#
        );
        // json.dumps agrees, OrderedDict order included.
        let dumps = py_eval(
            py,
            "lambda o: json.dumps(o, separators=(',', ':'), ensure_ascii=False)",
        );
        assert_eq!(
            dumps.call1((&obj,)).unwrap().to_string(),
            write(&obj).unwrap()
        );
    });
}

#[test]
fn output_rejects_what_json_cannot_hold() {
    Python::attach(|py| {
        for (expr, expected) in [
            ("{'a': [1, {2}]}", "Object of type set is not JSON serializable (at $.a[1] in the return value)"),
            ("{1: 'x'}", "dict key 1 (int) is not a str (the return value itself)"),
            ("{'a': {None: 'x'}}", "dict key None (NoneType) is not a str (at $.a in the return value)"),
            ("[float('nan')]", "float nan is not a JSON number (at $[0] in the return value)"),
            ("{'v': float('-inf')}", "float -inf is not a JSON number (at $.v in the return value)"),
            ("{'a b': b'bytes'}", r#"Object of type bytes is not JSON serializable (at $["a b"] in the return value)"#),
            ("{'x': [{'y\"': (0, 1, object())}]}", r#"Object of type object is not JSON serializable (at $.x[0]["y\""][2] in the return value)"#),
            ("fractions.Fraction(1, 3)", "Object of type Fraction is not JSON serializable (the return value itself)"),
            ("'\\ud800'", "str '\\ud800' is not valid Unicode (it has a lone surrogate) (the return value itself)"),
            ("{'\\udc00': 1}", "str '\\udc00' is not valid Unicode (it has a lone surrogate) (the return value itself)"),
        ] {
            let mut out = b"prefix".to_vec();
            let err = py_to_json(&py_eval(py, expr), &mut out, usize::MAX).unwrap_err();
            assert_eq!(err.to_string(), expected, "{expr}");
            assert!(!err.is_too_large());
            assert_eq!(out, b"prefix", "{expr}: out is restored on error");
        }
    });
}

#[test]
fn a_container_that_contains_itself_is_an_error_not_a_crash() {
    Python::attach(|py| {
        for expr in [
            "(lambda l: (l.append(l), l)[1])([])",
            "(lambda d: (d.__setitem__('d', d), d)[1])({})",
        ] {
            let err = write(&py_eval(py, expr)).unwrap_err();
            assert!(
                err.to_string().contains("nesting deeper than 512 levels"),
                "{err}"
            );
        }
    });
}

#[test]
fn the_output_limit_stops_the_write_early() {
    Python::attach(|py| {
        // A string over the limit: refused before a byte of it is copied.
        let big = py_eval(py, "'x' * 10_000_000");
        let mut out = Vec::new();
        let err = py_to_json(&big, &mut out, 1_000_000).unwrap_err();
        assert!(err.is_too_large());
        assert_eq!(err, OutputError::too_large(1_000_000));
        assert_eq!(
            err.to_string(),
            "the return value is larger than 1000000 bytes as JSON"
        );
        assert!(out.is_empty() && out.capacity() == 0, "{}", out.capacity());

        // A non-ASCII one: refused before Python makes its UTF-8 copy (which would show
        // in sys.getsizeof, as the copy is cached on the str).
        let wide = py_eval(py, "'é' * 1_000_000");
        let size = py_eval(py, "sys.getsizeof");
        let before: usize = size.call1((&wide,)).unwrap().extract().unwrap();
        assert!(py_to_json(&wide, &mut out, 500_000)
            .unwrap_err()
            .is_too_large());
        let after: usize = size.call1((&wide,)).unwrap().extract().unwrap();
        assert_eq!(before, after);

        // Many small items: the write stops where it crosses the limit, having held no
        // more than the limit.
        let many = py_eval(py, "[{'id': i, 'name': 'item'} for i in range(1_000_000)]");
        let err = py_to_json(&many, &mut out, 4096).unwrap_err();
        assert!(err.is_too_large(), "{err}");
        assert!(out.is_empty());
        assert!(out.capacity() <= 4096, "{}", out.capacity());
        // Escapes count too.
        let escapes = py_eval(py, "'\\n' * 600");
        assert!(py_to_json(&escapes, &mut out, 1000)
            .unwrap_err()
            .is_too_large());
    });
}

#[test]
fn the_output_limit_counts_what_out_already_holds() {
    Python::attach(|py| {
        let obj = py_eval(py, "{'a': [1, 2.5, 'x']}");
        let json = write(&obj).unwrap();
        assert_eq!(json, r#"{"a":[1,2.5,"x"]}"#);
        let n = json.len();

        let mut out = Vec::new();
        py_to_json(&obj, &mut out, n).unwrap();
        assert_eq!(out, json.as_bytes());
        let mut out = Vec::new();
        assert!(py_to_json(&obj, &mut out, n - 1)
            .unwrap_err()
            .is_too_large());

        let mut out = b"abc".to_vec();
        py_to_json(&obj, &mut out, n + 3).unwrap();
        assert_eq!(out, format!("abc{json}").as_bytes());
        let mut out = b"abc".to_vec();
        assert!(py_to_json(&obj, &mut out, n + 2)
            .unwrap_err()
            .is_too_large());
        assert_eq!(out, b"abc");
    });
}

/// Equal as JSON: numbers by value when either is a float, objects in the same order.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            x.as_f64() == y.as_f64()
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((kx, vx), (ky, vy))| kx == ky && same(vx, vy))
        }
        _ => a == b,
    }
}

fn any_string() -> impl Strategy<Value = String> {
    prop::collection::vec(any::<char>(), 0..12).prop_map(String::from_iter)
}

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON has no nan or inf", |f| f.is_finite())
            .prop_map(Value::from),
        any_string().prop_map(Value::from),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::from),
            prop::collection::vec((any_string(), inner), 0..8)
                .prop_map(|entries| Value::Object(entries.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_json_value_survives_the_round_trip(value in any_json()) {
        let json = serde_json::to_vec(&value).unwrap();
        let written = Python::attach(|py| {
            let obj = json_to_py(py, &json).unwrap();
            // The same objects as json.loads makes.
            let theirs = py_eval(py, "json.loads")
                .call1((std::str::from_utf8(&json).unwrap(),))
                .unwrap();
            assert_eq!(repr(&obj), repr(&theirs));
            write(&obj).unwrap()
        });
        let back: Value = serde_json::from_str(&written).unwrap();
        prop_assert!(same(&value, &back), "{value} -> {written}");
    }

    #[test]
    fn any_string_parses_however_it_is_escaped(
        chars in prop::collection::vec((any::<char>(), 0..3u8), 0..16),
    ) {
        // Each char raw (escaped if JSON requires it), as \uXXXX (a surrogate pair
        // beyond U+FFFF), or with its short escape where it has one.
        let mut json = String::from("\"");
        for &(c, how) in &chars {
            let short = match c {
                '"' => Some("\\\""),
                '\\' => Some("\\\\"),
                '/' => Some("\\/"),
                '\n' => Some("\\n"),
                '\t' => Some("\\t"),
                _ => None,
            };
            match (how, short) {
                (2, Some(esc)) => json.push_str(esc),
                (1, _) | (_, Some(_)) => {
                    for unit in c.encode_utf16(&mut [0; 2]) {
                        json.push_str(&format!("\\u{unit:04X}"));
                    }
                }
                _ if (c as u32) < 0x20 => json.push_str(&format!("\\u{:04x}", c as u32)),
                _ => json.push(c),
            }
        }
        json.push('"');
        let expected: String = chars.iter().map(|&(c, _)| c).collect();
        let got: String = Python::attach(|py| json_to_py(py, json.as_bytes()).unwrap().extract().unwrap());
        prop_assert_eq!(got, expected, "{}", json);
    }

    #[test]
    fn any_integer_crosses_digit_for_digit(
        negative in any::<bool>(),
        digits in "[1-9][0-9]{0,80}|0",
    ) {
        let json = if negative && digits != "0" { format!("-{digits}") } else { digits };
        prop_assert_eq!(round_trip(&json), json);
    }

    #[test]
    fn any_string_is_written_as_serde_json_writes_it(s in any_string()) {
        let written = Python::attach(|py| write(&pyo3::types::PyString::new(py, &s)).unwrap());
        prop_assert_eq!(written, serde_json::to_string(&s).unwrap());
    }
}
