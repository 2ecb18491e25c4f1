//! PostgreSQL arrays in their binary form, read in place: no allocation per
//! element, no check of text that is only compared.

use tokio_postgres::types::{FromSql, Type};

type BoxError = Box<dyn std::error::Error + Sync + Send>;

/// An array's elements' bytes, in order (NULL as empty); a multi-dimensional
/// array's elements in row-major order.
pub struct PgArray<'a> {
    count: usize,
    elements: &'a [u8],
}

impl PgArray<'_> {
    /// An array with no element (what an aggregate of no row, NULL, reads as).
    pub const EMPTY: PgArray<'static> = PgArray {
        count: 0,
        elements: &[],
    };
}

impl<'a> FromSql<'a> for PgArray<'a> {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        let word = |at: usize| -> Result<i32, BoxError> {
            let bytes = raw.get(at..at + 4).ok_or("the array is cut short")?;
            Ok(i32::from_be_bytes(bytes.try_into()?))
        };
        // The number of dimensions, a flag for NULLs, the element type, then
        // each dimension's length and lower bound.
        let dimensions = usize::try_from(word(0)?)?;
        if dimensions > 6 {
            return Err(format!("an array of {dimensions} dimensions").into());
        }
        let mut count = usize::from(dimensions > 0);
        for d in 0..dimensions {
            count = count.saturating_mul(usize::try_from(word(12 + 8 * d)?)?);
        }
        let start = 12 + 8 * dimensions;
        Ok(PgArray {
            count,
            elements: raw.get(start..).ok_or("the array is cut short")?,
        })
    }

    fn accepts(ty: &Type) -> bool {
        matches!(
            *ty,
            Type::INT4_ARRAY
                | Type::INT8_ARRAY
                | Type::TEXT_ARRAY
                | Type::OID_ARRAY
                | Type::BOOL_ARRAY
                | Type::TIMESTAMPTZ_ARRAY
        )
    }
}

impl<'a> PgArray<'a> {
    /// The elements' bytes (NULL as empty); fewer than the array claims if it
    /// is cut short.
    pub fn iter(&self) -> impl Iterator<Item = &'a [u8]> + use<'a> {
        self.nullable().map(Option::unwrap_or_default)
    }

    /// The elements' bytes, None for NULL; fewer than the array claims if it
    /// is cut short.
    pub fn nullable(&self) -> impl Iterator<Item = Option<&'a [u8]>> + use<'a> {
        let mut rest = self.elements;
        (0..self.count).map_while(move |_| {
            let (len, tail) = rest.split_first_chunk::<4>()?;
            let len = i32::from_be_bytes(*len);
            let Ok(len) = usize::try_from(len) else {
                rest = tail;
                return Some(None);
            };
            let (element, tail) = tail.split_at(len.min(tail.len()));
            rest = tail;
            Some(Some(element))
        })
    }

    /// All the bytes its elements take, as read.
    pub fn bytes(&self) -> &'a [u8] {
        self.elements
    }
}

/// An int4 element; 0 if it is not one.
pub fn int4(element: &[u8]) -> i32 {
    element.try_into().map_or(0, i32::from_be_bytes)
}

/// An int8 element; 0 if it is not one (NULL counters read as 0).
pub fn int8(element: &[u8]) -> i64 {
    element.try_into().map_or(0, i64::from_be_bytes)
}

/// An oid element; 0 if it is not one.
pub fn oid(element: &[u8]) -> u32 {
    element.try_into().map_or(0, u32::from_be_bytes)
}

/// A bool element; false if it is not one.
pub fn bool(element: &[u8]) -> bool {
    element == [1]
}

/// A text element; "" if it is not UTF-8 (the server sends the client's
/// encoding, which tokio-postgres sets to UTF-8).
pub fn text(element: &[u8]) -> &str {
    std::str::from_utf8(element).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::bytes::BytesMut;
    use tokio_postgres::types::ToSql;

    fn raw(value: &dyn ToSql, ty: Type) -> BytesMut {
        let mut raw = BytesMut::new();
        value.to_sql_checked(&ty, &mut raw).unwrap();
        raw
    }

    #[test]
    fn arrays_read_in_place() {
        let r = raw(&vec![7i32, -1, 123_456], Type::INT4_ARRAY);
        let a = PgArray::from_sql(&Type::INT4_ARRAY, &r).unwrap();
        assert_eq!(a.iter().map(int4).collect::<Vec<_>>(), [7, -1, 123_456]);

        let r = raw(
            &vec![Some("Timeout\u{1f}PgSleep"), None, Some("")],
            Type::TEXT_ARRAY,
        );
        let a = PgArray::from_sql(&Type::TEXT_ARRAY, &r).unwrap();
        let waits: Vec<&[u8]> = a.iter().collect();
        assert_eq!(waits, [&b"Timeout\x1fPgSleep"[..], b"", b""]);

        let r = raw(&vec![Some("x"), None, Some("")], Type::TEXT_ARRAY);
        let a = PgArray::from_sql(&Type::TEXT_ARRAY, &r).unwrap();
        let texts: Vec<Option<&[u8]>> = a.nullable().collect();
        assert_eq!(
            texts,
            [Some(&b"x"[..]), None, Some(b"")],
            "NULL is not empty"
        );

        let r = raw(&vec![true, false], Type::BOOL_ARRAY);
        let a = PgArray::from_sql(&Type::BOOL_ARRAY, &r).unwrap();
        assert_eq!(a.iter().map(bool).collect::<Vec<_>>(), [true, false]);

        let r = raw(&vec![16_384u32, 10], Type::OID_ARRAY);
        let a = PgArray::from_sql(&Type::OID_ARRAY, &r).unwrap();
        assert_eq!(a.iter().map(oid).collect::<Vec<_>>(), [16_384, 10]);

        let r = raw(&Vec::<i32>::new(), Type::INT4_ARRAY);
        assert_eq!(
            PgArray::from_sql(&Type::INT4_ARRAY, &r)
                .unwrap()
                .iter()
                .count(),
            0
        );
    }

    #[test]
    fn two_dimensions_read_row_by_row() {
        // ARRAY[[1,2,3],[4,5,6]]::int8[] as PostgreSQL sends it.
        let mut r = Vec::new();
        for w in [2i32, 0, 20, 2, 1, 3, 1] {
            r.extend_from_slice(&w.to_be_bytes());
        }
        for v in 1i64..=6 {
            r.extend_from_slice(&8i32.to_be_bytes());
            r.extend_from_slice(&v.to_be_bytes());
        }
        let a = PgArray::from_sql(&Type::INT8_ARRAY, &r).unwrap();
        assert_eq!(a.iter().map(int8).collect::<Vec<_>>(), [1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn cut_short_is_an_error_or_fewer_elements_never_a_panic() {
        assert!(PgArray::from_sql(&Type::INT4_ARRAY, &[]).is_err());
        assert!(PgArray::from_sql(&Type::INT4_ARRAY, &[0, 0, 0, 1, 0]).is_err());
        let r = raw(&vec![1i32, 2, 3], Type::INT4_ARRAY);
        let cut = PgArray::from_sql(&Type::INT4_ARRAY, &r[..r.len() - 2]).unwrap();
        assert_eq!(cut.iter().map(int4).collect::<Vec<_>>(), [1, 2, 0]);
        let cut = PgArray::from_sql(&Type::INT4_ARRAY, &r[..r.len() - 6]).unwrap();
        assert_eq!(cut.iter().map(int4).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(int4(b"12"), 0);
    }
}
