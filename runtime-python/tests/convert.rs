//! JSON ⇄ Python conversion: exact round trips and the output rules.

use pyo3::prelude::*;
use pyo3::types::PyDict;
use runtime_python::convert::{from_py, to_py};
use serde_json::{json, Value};

fn py_eval<'py>(py: Python<'py>, expr: &str) -> Bound<'py, PyAny> {
    let code = std::ffi::CString::new(expr).unwrap();
    let globals = PyDict::new(py);
    py.run(
        c"import collections, enum, fractions\nclass Color(enum.IntEnum):\n    RED = 1\n",
        Some(&globals),
        None,
    )
    .unwrap();
    py.eval(&code, Some(&globals), None).unwrap()
}

/// Value -> Python -> Value gives back the same JSON text.
fn round_trip(text: &str) {
    let value: Value = serde_json::from_str(text).unwrap();
    Python::attach(|py| {
        let obj = to_py(py, &value).unwrap();
        let back = from_py(&obj).unwrap();
        assert_eq!(back.to_string(), value.to_string(), "{text}");
    });
}

#[test]
fn round_trips_are_exact() {
    for text in [
        r#"{"input": {"b": 1, "a": 2, "c": {"z": [], "y": {}}}, "metadata": {"k": "v"}}"#,
        "[1, -1, 0, 9223372036854775807, -9223372036854775808, 18446744073709551615]",
        "[18446744073709551616, -18446744073709551617, 123456789012345678901234567890123456789012345678901234567890]",
        "[0.1, -2.5, 1e-7, 1.7976931348623157e+308, 5e-324, 100000.0, 1.0, -0.0]",
        r#"["", "é", "日本語", "😀", "\u0000\u001f", "line\nbreak", "\"quoted\" \\ slash"]"#,
        "[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]",
        r#""just a string""#,
        "42",
        "-0.5",
        "null",
        "true",
        "false",
        "[]",
        "{}",
    ] {
        round_trip(text);
    }
}

#[test]
fn floats_keep_their_value_whatever_their_spelling() {
    let value: Value =
        serde_json::from_str("[1.0e-7, 1E5, 2.50, 1e308, 0.30000000000000004]").unwrap();
    Python::attach(|py| {
        let back = from_py(&to_py(py, &value).unwrap()).unwrap();
        let floats = |v: &Value| -> Vec<f64> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|n| n.as_f64().unwrap())
                .collect()
        };
        assert_eq!(floats(&back), floats(&value));
    });
}

#[test]
fn big_ints_are_python_ints_with_every_digit() {
    let value: Value = serde_json::from_str(
        r#"{"big": 340282366920938463463374607431768211457, "neg": -18446744073709551616, "u64": 18446744073709551615}"#,
    )
    .unwrap();
    Python::attach(|py| {
        let obj = to_py(py, &value).unwrap();
        let check = |key: &str, digits: &str| {
            let item = obj.get_item(key).unwrap();
            assert_eq!(item.get_type().name().unwrap().to_string(), "int");
            assert_eq!(item.str().unwrap().to_string(), digits);
        };
        check("big", "340282366920938463463374607431768211457");
        check("neg", "-18446744073709551616");
        check("u64", "18446744073709551615");
        // And Python-made big ints come back exact.
        let made = py_eval(py, "[2**200, -(3**90), 10**30 + 1]");
        assert_eq!(
            from_py(&made).unwrap().to_string(),
            format!(
                "[{},{},{}]",
                "1606938044258990275541962092341162602522202993782792835301376",
                "-8727963568087712425891397479476727340041449",
                "1000000000000000000000000000001"
            )
        );
    });
}

#[test]
fn python_types_map_to_json_types() {
    Python::attach(|py| {
        let obj = to_py(
            py,
            &json!({"f": 1.5, "i": 1, "s": "x", "l": [], "d": {}, "n": null, "b": true}),
        )
        .unwrap();
        let types = py_eval(py, "lambda d: {k: type(v).__name__ for k, v in d.items()}")
            .call1((obj,))
            .unwrap();
        assert_eq!(
            from_py(&types).unwrap(),
            json!({"f": "float", "i": "int", "s": "str", "l": "list", "d": "dict", "n": "NoneType", "b": "bool"})
        );
    });
}

#[test]
fn output_accepts_tuples_subclasses_and_keeps_order() {
    Python::attach(|py| {
        let obj = py_eval(
            py,
            "{'t': (1, 'a'), 'b': True, 'f': False, 'e': Color.RED, \
              'o': collections.OrderedDict([('z', 1), ('a', 2)]), 'n': None, 'x': 0.25}",
        );
        assert_eq!(
            from_py(&obj).unwrap().to_string(),
            r#"{"t":[1,"a"],"b":true,"f":false,"e":1,"o":{"z":1,"a":2},"n":null,"x":0.25}"#
        );
    });
}

#[test]
fn output_rejects_what_json_cannot_hold() {
    Python::attach(|py| {
        for (expr, expected) in [
            ("{'a': [1, {2}]}", "Object of type set is not JSON serializable (at $.a[1] in the return value)"),
            ("{1: 'x'}", "dict key 1 (int) is not a str (the return value itself)"),
            ("[float('nan')]", "float nan is not a JSON number (at $[0] in the return value)"),
            ("{'v': float('-inf')}", "float -inf is not a JSON number (at $.v in the return value)"),
            ("{'a b': b'bytes'}", r#"Object of type bytes is not JSON serializable (at $["a b"] in the return value)"#),
            ("fractions.Fraction(1, 3)", "Object of type Fraction is not JSON serializable (the return value itself)"),
            ("'\\ud800'", "str '\\ud800' is not valid Unicode (it has a lone surrogate) (the return value itself)"),
        ] {
            let err = from_py(&py_eval(py, expr)).unwrap_err();
            assert_eq!(err.to_string(), expected, "{expr}");
        }
    });
}

#[test]
fn a_container_that_contains_itself_is_an_error_not_a_crash() {
    Python::attach(|py| {
        let obj = py_eval(py, "(lambda l: (l.append(l), l)[1])([])");
        let err = from_py(&obj).unwrap_err();
        assert!(
            err.to_string().contains("nesting deeper than 512 levels"),
            "{err}"
        );
    });
}
