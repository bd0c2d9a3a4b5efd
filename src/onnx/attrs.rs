//! Typed access to node attributes and attribute builders.
//!
//! Getters return `Ok(None)` when the attribute is absent and an error naming the attribute
//! when it is present with the wrong type; callers add the node name (see
//! [`crate::graph::Node::attr_int`] and its siblings).

use bytes::Bytes;

use super::pb::{self, attribute_proto::AttributeType};

/// Finds an attribute by name.
pub fn find<'a>(attrs: &'a [pb::AttributeProto], name: &str) -> Option<&'a pb::AttributeProto> {
    attrs.iter().find(|a| a.name.as_deref() == Some(name))
}

fn typed<'a>(
    attrs: &'a [pb::AttributeProto],
    name: &str,
    want: AttributeType,
) -> Result<Option<&'a pb::AttributeProto>, String> {
    match find(attrs, name) {
        None => Ok(None),
        Some(a) => {
            let ty = a.r#type.unwrap_or(0);
            // Old exporters sometimes leave `type` unset; accept when the payload is there.
            if ty == want as i32 || ty == 0 {
                Ok(Some(a))
            } else {
                let found = AttributeType::try_from(ty)
                    .map(|t| t.as_str_name().to_string())
                    .unwrap_or_else(|_| ty.to_string());
                Err(format!(
                    "attribute `{name}` should be {} but is {found}",
                    want.as_str_name()
                ))
            }
        }
    }
}

/// An INT attribute.
///
/// # Errors
/// The attribute exists with another type.
pub fn int(attrs: &[pb::AttributeProto], name: &str) -> Result<Option<i64>, String> {
    Ok(typed(attrs, name, AttributeType::Int)?.and_then(|a| a.i))
}

/// A FLOAT attribute.
///
/// # Errors
/// The attribute exists with another type.
pub fn float(attrs: &[pb::AttributeProto], name: &str) -> Result<Option<f32>, String> {
    Ok(typed(attrs, name, AttributeType::Float)?.and_then(|a| a.f))
}

/// An INTS attribute.
///
/// # Errors
/// The attribute exists with another type.
pub fn ints(attrs: &[pb::AttributeProto], name: &str) -> Result<Option<Vec<i64>>, String> {
    Ok(typed(attrs, name, AttributeType::Ints)?.map(|a| a.ints.clone()))
}

/// A FLOATS attribute.
///
/// # Errors
/// The attribute exists with another type.
pub fn floats(attrs: &[pb::AttributeProto], name: &str) -> Result<Option<Vec<f32>>, String> {
    Ok(typed(attrs, name, AttributeType::Floats)?.map(|a| a.floats.clone()))
}

/// A STRING attribute, decoded as UTF-8 (lossy).
///
/// # Errors
/// The attribute exists with another type.
pub fn string(attrs: &[pb::AttributeProto], name: &str) -> Result<Option<String>, String> {
    Ok(typed(attrs, name, AttributeType::String)?
        .and_then(|a| a.s.as_ref())
        .map(|s| String::from_utf8_lossy(s).into_owned()))
}

/// A TENSOR attribute.
///
/// # Errors
/// The attribute exists with another type.
pub fn tensor<'a>(
    attrs: &'a [pb::AttributeProto],
    name: &str,
) -> Result<Option<&'a pb::TensorProto>, String> {
    Ok(typed(attrs, name, AttributeType::Tensor)?.and_then(|a| a.t.as_ref()))
}

/// Builds an INT attribute.
pub fn make_int(name: &str, v: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Int as i32),
        i: Some(v),
        ..Default::default()
    }
}

/// Builds a FLOAT attribute.
pub fn make_float(name: &str, v: f32) -> pb::AttributeProto {
    pb::AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Float as i32),
        f: Some(v),
        ..Default::default()
    }
}

/// Builds an INTS attribute.
pub fn make_ints(name: &str, v: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Ints as i32),
        ints: v.to_vec(),
        ..Default::default()
    }
}

/// Builds a STRING attribute.
pub fn make_string(name: &str, v: &str) -> pb::AttributeProto {
    pb::AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::String as i32),
        s: Some(Bytes::from(v.as_bytes().to_vec())),
        ..Default::default()
    }
}

/// Builds a TENSOR attribute.
pub fn make_tensor(name: &str, t: pb::TensorProto) -> pb::AttributeProto {
    pb::AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Tensor as i32),
        t: Some(t),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn getters_check_types() {
        let attrs = vec![
            make_int("group", 2),
            make_ints("pads", &[1, 1, 1, 1]),
            make_float("epsilon", 1e-5),
            make_string("auto_pad", "NOTSET"),
        ];
        assert_eq!(int(&attrs, "group"), Ok(Some(2)));
        assert_eq!(int(&attrs, "missing"), Ok(None));
        assert_eq!(ints(&attrs, "pads"), Ok(Some(vec![1, 1, 1, 1])));
        assert_eq!(float(&attrs, "epsilon"), Ok(Some(1e-5)));
        assert_eq!(string(&attrs, "auto_pad"), Ok(Some("NOTSET".into())));
        let e = int(&attrs, "pads").unwrap_err();
        assert!(e.contains("`pads` should be INT but is INTS"), "{e}");
    }
}
