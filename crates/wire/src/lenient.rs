//! Lenient, borrowing field types for parsing DAG documents in one pass: a field of the wrong
//! JSON type is recorded as `Invalid` instead of failing the whole document, so the parser can
//! name the node and field at fault, and strings are borrowed from the input where possible.

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::borrow::Cow;
use std::fmt;

/// A field that should be a string.
#[derive(Debug, Default)]
pub(crate) enum Text<'a> {
    #[default]
    Missing,
    Null,
    Str(Cow<'a, str>),
    Invalid,
}

impl<'a> Text<'a> {
    /// The string, treating missing and null as `""`; `None` when the type is wrong.
    pub(crate) fn or_empty(&self) -> Option<&str> {
        match self {
            Text::Missing | Text::Null => Some(""),
            Text::Str(s) => Some(s),
            Text::Invalid => None,
        }
    }

    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Text::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// A field that should be an integer (a numeric string or an integral float is accepted).
#[derive(Debug, Default)]
pub(crate) enum Int {
    #[default]
    Missing,
    Null,
    Value(i64),
    Invalid,
}

impl Int {
    /// The integer, treating missing and null as 0; `None` when it is not an integer.
    pub(crate) fn or_zero(&self) -> Option<i64> {
        match self {
            Int::Missing | Int::Null => Some(0),
            Int::Value(v) => Some(*v),
            Int::Invalid => None,
        }
    }

    pub(crate) fn is_given(&self) -> bool {
        !matches!(self, Int::Missing | Int::Null)
    }

    /// A float is an integer when it has no fraction and is exactly representable.
    pub(crate) fn from_f64(v: f64) -> Int {
        if v.fract() == 0.0 && v.abs() < 9.0e15 {
            Int::Value(v as i64)
        } else {
            Int::Invalid
        }
    }

    /// A numeric string, surrounding whitespace and `_` separators allowed.
    pub(crate) fn from_text(v: &str) -> Int {
        v.trim()
            .replace('_', "")
            .parse()
            .map_or(Int::Invalid, Int::Value)
    }
}

/// A field that should be a list of strings.
#[derive(Debug, Default)]
pub(crate) enum TextList<'a> {
    #[default]
    Missing,
    Null,
    List(Vec<Cow<'a, str>>),
    Invalid,
}

impl<'a> TextList<'a> {
    /// The strings, treating missing and null as empty; `None` when the type is wrong.
    pub(crate) fn or_empty(&self) -> Option<&[Cow<'a, str>]> {
        match self {
            TextList::Missing | TextList::Null => Some(&[]),
            TextList::List(items) => Some(items),
            TextList::Invalid => None,
        }
    }
}

fn skip_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<IgnoredAny>()?.is_some() {}
    Ok(())
}

fn skip_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
    Ok(())
}

/// Implements the visitor methods every lenient type shares: null, and the JSON types it does
/// not want, which become `Invalid`.
macro_rules! lenient_visitor {
    ($null:expr, $invalid:expr) => {
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($null)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($null)
        }
        fn visit_some<D: Deserializer<'de>>(
            self,
            deserializer: D,
        ) -> Result<Self::Value, D::Error> {
            deserializer.deserialize_any(self)
        }
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok($invalid)
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            skip_map(map)?;
            Ok($invalid)
        }
    };
}

struct TextVisitor;

impl<'de> Visitor<'de> for TextVisitor {
    type Value = Text<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    lenient_visitor!(Text::Null, Text::Invalid);

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Text::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Text::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Text::Str(Cow::Owned(v)))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Text::Invalid)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Text::Invalid)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Text::Invalid)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        skip_seq(seq)?;
        Ok(Text::Invalid)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(TextVisitor)
    }
}

struct IntVisitor;

impl<'de> Visitor<'de> for IntVisitor {
    type Value = Int;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an integer")
    }

    lenient_visitor!(Int::Null, Int::Invalid);

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Int::Value(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(i64::try_from(v).map_or(Int::Invalid, Int::Value))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Int::from_f64(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Int::from_text(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        skip_seq(seq)?;
        Ok(Int::Invalid)
    }
}

impl<'de> Deserialize<'de> for Int {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(IntVisitor)
    }
}

struct TextListVisitor;

impl<'de> Visitor<'de> for TextListVisitor {
    type Value = TextList<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of strings")
    }

    lenient_visitor!(TextList::Null, TextList::Invalid);

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(TextList::Invalid)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(TextList::Invalid)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(TextList::Invalid)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(TextList::Invalid)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(2));
        let mut valid = true;
        while let Some(item) = seq.next_element::<Text<'de>>()? {
            match item {
                Text::Str(s) if valid => items.push(s),
                _ => valid = false,
            }
        }
        Ok(if valid {
            TextList::List(items)
        } else {
            TextList::Invalid
        })
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for TextList<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(TextListVisitor)
    }
}

/// What a list of objects is folded into, item by item as the document is read, so that no
/// list of raw items is ever held.
pub(crate) trait ObjectFold<'de>: Default {
    type Item: Deserialize<'de>;
    /// Takes the next item; `None` for an item that is not an object, so the fold can name its
    /// position.
    fn take(&mut self, item: Option<Self::Item>);
}

/// A list whose items should be objects, folded into `F`.
#[derive(Debug, Default)]
pub(crate) enum ObjectList<F> {
    #[default]
    Missing,
    List(F),
    Invalid,
}

struct Item<T>(Option<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Item<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ItemVisitor<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for ItemVisitor<T> {
            type Value = Item<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map)).map(|t| Item(Some(t)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                skip_seq(seq)?;
                Ok(Item(None))
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Item(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Item(None))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Item(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(Item(None))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(Item(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Item(None))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(Item(None))
            }
        }
        deserializer.deserialize_any(ItemVisitor(std::marker::PhantomData))
    }
}

impl<'de, F: ObjectFold<'de>> Deserialize<'de> for ObjectList<F> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ListVisitor<F>(std::marker::PhantomData<F>);
        impl<'de, F: ObjectFold<'de>> Visitor<'de> for ListVisitor<F> {
            type Value = ObjectList<F>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of objects")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut fold = F::default();
                while let Some(Item(item)) = seq.next_element::<Item<F::Item>>()? {
                    fold.take(item);
                }
                Ok(ObjectList::List(fold))
            }
            lenient_visitor!(ObjectList::Invalid, ObjectList::Invalid);
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(ObjectList::Invalid)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(ObjectList::Invalid)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(ObjectList::Invalid)
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(ObjectList::Invalid)
            }
        }
        deserializer.deserialize_any(ListVisitor(std::marker::PhantomData))
    }
}
