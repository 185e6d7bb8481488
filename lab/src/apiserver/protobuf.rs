//! Protobuf request bodies, for the one case clients send them here: kubectl's
//! generators (`kubectl create namespace`) post a Namespace in Kubernetes' protobuf
//! envelope (`k8s\0` + `runtime.Unknown`). Decodes that into the JSON the rest of the
//! server handles; any other protobuf body is refused with 415, naming JSON as the way.

use serde_json::{Map, Value, json};

use super::status::ApiError;

pub const CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf";

const MAGIC: &[u8] = b"k8s\0";

/// The value of one field of a protobuf message: length-delimited bytes (strings,
/// messages, map entries) or a number, which nothing here reads.
enum Field<'a> {
    Bytes(&'a [u8]),
    Number,
}

fn varint(data: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *data.get(*at)?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// The fields of one message, in order; `None` if the bytes are not protobuf.
fn fields(data: &[u8]) -> Option<Vec<(u64, Field<'_>)>> {
    let mut at = 0;
    let mut out = Vec::new();
    while at < data.len() {
        let key = varint(data, &mut at)?;
        let field = match key & 7 {
            0 => {
                varint(data, &mut at)?;
                Field::Number
            }
            1 => {
                at = at.checked_add(8).filter(|end| *end <= data.len())?;
                Field::Number
            }
            2 => {
                let len = usize::try_from(varint(data, &mut at)?).ok()?;
                let end = at.checked_add(len).filter(|end| *end <= data.len())?;
                let bytes = &data[at..end];
                at = end;
                Field::Bytes(bytes)
            }
            5 => {
                at = at.checked_add(4).filter(|end| *end <= data.len())?;
                Field::Number
            }
            _ => return None,
        };
        out.push((key >> 3, field));
    }
    Some(out)
}

fn text(bytes: &[u8]) -> Option<Value> {
    std::str::from_utf8(bytes).ok().map(|s| json!(s))
}

/// `map<string, string>` entries (key 1, value 2) into `map`.
fn map_entry(bytes: &[u8], map: &mut Map<String, Value>) -> Option<()> {
    let (mut key, mut value) = (String::new(), String::new());
    for (number, field) in fields(bytes)? {
        if let Field::Bytes(b) = field {
            let s = std::str::from_utf8(b).ok()?.to_string();
            match number {
                1 => key = s,
                2 => value = s,
                _ => {}
            }
        }
    }
    map.insert(key, Value::String(value));
    Some(())
}

/// The ObjectMeta fields a client sets on create.
fn object_meta(bytes: &[u8]) -> Option<Value> {
    let mut meta = Map::new();
    let (mut labels, mut annotations, mut finalizers) = (Map::new(), Map::new(), Vec::new());
    for (number, field) in fields(bytes)? {
        let Field::Bytes(b) = field else { continue };
        match number {
            1 => {
                meta.insert("name".into(), text(b)?);
            }
            2 => {
                meta.insert("generateName".into(), text(b)?);
            }
            3 => {
                meta.insert("namespace".into(), text(b)?);
            }
            11 => map_entry(b, &mut labels)?,
            12 => map_entry(b, &mut annotations)?,
            14 => finalizers.push(text(b)?),
            _ => {}
        }
    }
    for (name, map) in [("labels", labels), ("annotations", annotations)] {
        if !map.is_empty() {
            meta.insert(name.into(), Value::Object(map));
        }
    }
    if !finalizers.is_empty() {
        meta.insert("finalizers".into(), Value::Array(finalizers));
    }
    Some(Value::Object(meta))
}

fn namespace(bytes: &[u8]) -> Option<Value> {
    let mut object = json!({"apiVersion": "v1", "kind": "Namespace"});
    for (number, field) in fields(bytes)? {
        let Field::Bytes(b) = field else { continue };
        match number {
            1 => object["metadata"] = object_meta(b)?,
            2 => {
                let finalizers = fields(b)?
                    .into_iter()
                    .filter_map(|(n, f)| match (n, f) {
                        (1, Field::Bytes(s)) => text(s),
                        _ => None,
                    })
                    .collect::<Vec<_>>();
                if !finalizers.is_empty() {
                    object["spec"] = json!({"finalizers": finalizers});
                }
            }
            _ => {}
        }
    }
    Some(object)
}

/// Decodes a protobuf request body into the equivalent JSON object.
pub fn decode(body: &[u8]) -> Result<Value, ApiError> {
    let invalid =
        || ApiError::bad_request("the request body is not a valid Kubernetes protobuf object");
    let envelope = body.strip_prefix(MAGIC).ok_or_else(invalid)?;
    let (mut kind, mut raw) = (String::new(), None);
    for (number, field) in fields(envelope).ok_or_else(invalid)? {
        match (number, field) {
            (1, Field::Bytes(type_meta)) => {
                for (n, f) in fields(type_meta).ok_or_else(invalid)? {
                    if let (2, Field::Bytes(k)) = (n, f) {
                        kind = String::from_utf8_lossy(k).into_owned();
                    }
                }
            }
            (2, Field::Bytes(bytes)) => raw = Some(bytes),
            _ => {}
        }
    }
    match kind.as_str() {
        "Namespace" => namespace(raw.ok_or_else(invalid)?).ok_or_else(invalid),
        other => {
            let mut error = ApiError::unsupported_media_type(CONTENT_TYPE);
            error.message = format!(
                "this server reads protobuf bodies only for Namespace (got {other:?}); send application/json (kubectl create -f / apply -f)"
            );
            Err(error)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_field(number: u64, bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![((number << 3) | 2) as u8];
        let mut len = bytes.len();
        loop {
            let byte = (len & 0x7f) as u8;
            len >>= 7;
            if len == 0 {
                out.push(byte);
                break;
            }
            out.push(byte | 0x80);
        }
        out.extend_from_slice(bytes);
        out
    }

    fn envelope(kind: &str, raw: &[u8]) -> Vec<u8> {
        let type_meta = [bytes_field(1, b"v1"), bytes_field(2, kind.as_bytes())].concat();
        let mut body = MAGIC.to_vec();
        body.extend(bytes_field(1, &type_meta));
        body.extend(bytes_field(2, raw));
        body.extend(bytes_field(4, CONTENT_TYPE.as_bytes()));
        body
    }

    #[test]
    fn decodes_kubectl_create_namespace() {
        let label = [bytes_field(1, b"team"), bytes_field(2, b"net")].concat();
        let meta = [bytes_field(1, b"shop"), bytes_field(11, &label)].concat();
        let namespace = [
            bytes_field(1, &meta),
            bytes_field(2, &bytes_field(1, b"kubernetes")),
            bytes_field(3, b""),
        ]
        .concat();
        let value = decode(&envelope("Namespace", &namespace)).unwrap();
        assert_eq!(
            value,
            json!({"apiVersion": "v1", "kind": "Namespace",
                   "metadata": {"name": "shop", "labels": {"team": "net"}},
                   "spec": {"finalizers": ["kubernetes"]}})
        );
    }

    #[test]
    fn other_kinds_and_garbage_are_refused() {
        let err = decode(&envelope("Pod", &bytes_field(1, &bytes_field(1, b"p")))).unwrap_err();
        assert_eq!(err.code, 415);
        assert!(
            err.message.contains("only for Namespace (got \"Pod\")"),
            "{}",
            err.message
        );
        assert_eq!(decode(b"{\"kind\":\"Namespace\"}").unwrap_err().code, 400);
        assert_eq!(decode(b"k8s\0\x0a\xff").unwrap_err().code, 400);
    }
}
