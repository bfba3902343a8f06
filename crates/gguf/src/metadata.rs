//! The key/value metadata of a GGUF file, in file order, with typed getters whose
//! errors name the key and the type that was expected.

use crate::error::{GgufError, Result};
use crate::value::Value;
use std::collections::HashMap;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metadata {
    entries: Vec<(String, Value)>,
    index: HashMap<String, usize>,
}

impl Metadata {
    /// Adds or replaces a key; returns false when the key was already present.
    pub fn insert(&mut self, key: impl Into<String>, value: Value) -> bool {
        let key = key.into();
        match self.index.get(&key) {
            Some(&i) => {
                self.entries[i].1 = value;
                false
            }
            None => {
                self.index.insert(key.clone(), self.entries.len());
                self.entries.push((key, value));
                true
            }
        }
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.index.get(key).map(|&i| &self.entries[i].1)
    }

    pub fn contains(&self, key: &str) -> bool {
        self.index.contains_key(key)
    }

    /// Entries in the order they appear in the file.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn required(&self, key: &str) -> Result<&Value> {
        self.get(key)
            .ok_or_else(|| GgufError::MissingKey { key: key.into() })
    }

    fn wrong(key: &str, expected: &'static str, found: &Value) -> GgufError {
        GgufError::WrongType {
            key: key.into(),
            expected,
            found: format!("{} {}", found.value_type(), found.describe()),
        }
    }

    fn integer<T: TryFrom<i128>>(&self, key: &str, expected: &'static str) -> Result<T> {
        let v = self.required(key)?;
        v.as_i128()
            .and_then(|i| T::try_from(i).ok())
            .ok_or_else(|| Self::wrong(key, expected, v))
    }

    /// An integer of any width that fits in u32.
    pub fn get_u32(&self, key: &str) -> Result<u32> {
        self.integer(key, "an unsigned 32-bit integer")
    }

    pub fn get_u64(&self, key: &str) -> Result<u64> {
        self.integer(key, "an unsigned 64-bit integer")
    }

    pub fn get_i32(&self, key: &str) -> Result<i32> {
        self.integer(key, "a signed 32-bit integer")
    }

    /// A float (or an integer, converted).
    pub fn get_f32(&self, key: &str) -> Result<f32> {
        let v = self.required(key)?;
        v.as_f64()
            .map(|f| f as f32)
            .ok_or_else(|| Self::wrong(key, "a number", v))
    }

    pub fn get_bool(&self, key: &str) -> Result<bool> {
        match self.required(key)? {
            Value::Bool(b) => Ok(*b),
            v => Err(Self::wrong(key, "a bool", v)),
        }
    }

    pub fn get_str(&self, key: &str) -> Result<&str> {
        let v = self.required(key)?;
        v.as_str().ok_or_else(|| Self::wrong(key, "a string", v))
    }

    fn get_array(&self, key: &str, expected: &'static str) -> Result<&[Value]> {
        match self.required(key)? {
            Value::Array(a) => Ok(&a.values),
            v => Err(Self::wrong(key, expected, v)),
        }
    }

    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>> {
        const EXPECTED: &str = "an array of strings";
        let values = self.get_array(key, EXPECTED)?;
        values
            .iter()
            .map(|v| v.as_str().ok_or_else(|| Self::wrong(key, EXPECTED, v)))
            .collect()
    }

    pub fn get_i32_array(&self, key: &str) -> Result<Vec<i32>> {
        const EXPECTED: &str = "an array of 32-bit integers";
        let values = self.get_array(key, EXPECTED)?;
        values
            .iter()
            .map(|v| {
                v.as_i128()
                    .and_then(|i| i32::try_from(i).ok())
                    .ok_or_else(|| Self::wrong(key, EXPECTED, v))
            })
            .collect()
    }

    pub fn get_bool_array(&self, key: &str) -> Result<Vec<bool>> {
        const EXPECTED: &str = "an array of bools";
        let values = self.get_array(key, EXPECTED)?;
        values
            .iter()
            .map(|v| match v {
                Value::Bool(b) => Ok(*b),
                v => Err(Self::wrong(key, EXPECTED, v)),
            })
            .collect()
    }

    pub fn get_f32_array(&self, key: &str) -> Result<Vec<f32>> {
        const EXPECTED: &str = "an array of numbers";
        let values = self.get_array(key, EXPECTED)?;
        values
            .iter()
            .map(|v| {
                v.as_f64()
                    .map(|f| f as f32)
                    .ok_or_else(|| Self::wrong(key, EXPECTED, v))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::{Array, ValueType};

    #[test]
    fn getters_convert_and_name_the_key_on_error() {
        let mut m = Metadata::default();
        m.insert("a.count", Value::U64(30));
        m.insert("a.neg", Value::I32(-1));
        m.insert("a.name", Value::String("llama".into()));
        m.insert(
            "a.list",
            Value::Array(Array {
                element_type: ValueType::String,
                values: vec![Value::String("x".into())],
            }),
        );
        assert_eq!(m.get_u32("a.count").unwrap(), 30);
        assert_eq!(m.get_f32("a.count").unwrap(), 30.0);
        assert_eq!(m.get_str_array("a.list").unwrap(), vec!["x"]);
        let err = m.get_u32("a.neg").unwrap_err().to_string();
        assert!(err.contains("a.neg") && err.contains("unsigned"), "{err}");
        let err = m.get_str("a.count").unwrap_err().to_string();
        assert!(err.contains("a.count") && err.contains("string"), "{err}");
        let err = m.get_u32("missing.key").unwrap_err().to_string();
        assert!(err.contains("missing.key"), "{err}");
    }
}
