//! Human sizes: `4G`, `512K`, `1.5M`, `4096`, with binary suffixes K/M/G/T (optionally `KiB`, `kB`
//! etc., all binary, as nbdkit and qemu-img read them).

use crate::error::{invalid, Error, ErrorKind, Result};

/// The largest disk ferry copies: 256 TiB, four times vSphere's largest virtual disk (62 TB).
/// A size past it is a server's or an image header's mistake (or an attack): a claim of 2^61
/// bytes would be planned, journaled and preallocated as if it were real.
pub const MAX_DISK_SIZE: u64 = 1 << 48;

/// Refuses a disk size past [`MAX_DISK_SIZE`]; `what` names who claims it.
pub fn check_disk_size(what: &str, size: u64) -> Result<()> {
    if size > MAX_DISK_SIZE {
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!(
                "{what} claims {size} bytes ({}), past the largest disk ferry copies ({} bytes, 256 TiB)",
                human(size),
                MAX_DISK_SIZE
            ),
        ));
    }
    Ok(())
}

/// `size` in the largest binary unit that keeps it at least 1 (`3.5 TiB`), for messages.
fn human(size: u64) -> String {
    let units = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut v = size as f64;
    let mut u = 0;
    while v >= 1024.0 && u < units.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", units[u])
}

/// Parses a size like `4G` or `65536` into bytes.
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let digits_end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, suffix) = t.split_at(digits_end);
    if num.is_empty() {
        return Err(invalid(format!("invalid size '{s}'")));
    }
    let shift = match suffix.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        "P" | "PB" | "PIB" => 50,
        _ => return Err(invalid(format!("invalid size suffix in '{s}'"))),
    };
    if let Ok(n) = num.parse::<u64>() {
        return n
            .checked_mul(1u64 << shift)
            .ok_or_else(|| invalid(format!("size '{s}' is too large")));
    }
    let f: f64 = num
        .parse()
        .map_err(|_| invalid(format!("invalid size '{s}'")))?;
    let v = f * (1u64 << shift) as f64;
    if !(0.0..1.8e19).contains(&v) {
        return Err(invalid(format!("size '{s}' is out of range")));
    }
    Ok(v as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffixes_are_binary() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("4K").unwrap(), 4096);
        assert_eq!(parse_size("1M").unwrap(), 1 << 20);
        assert_eq!(parse_size("4G").unwrap(), 4 << 30);
        assert_eq!(parse_size("2T").unwrap(), 2 << 40);
        assert_eq!(parse_size("1.5M").unwrap(), 3 << 19);
        assert_eq!(parse_size("8MiB").unwrap(), 8 << 20);
    }

    #[test]
    fn garbage_is_rejected() {
        for s in ["", "G", "12Q", "-1", "99999999999999999999T"] {
            assert!(parse_size(s).is_err(), "{s}");
        }
    }

    #[test]
    fn sizes_past_the_largest_disk_are_refused_in_one_line() {
        assert!(check_disk_size("x", MAX_DISK_SIZE).is_ok());
        let e = check_disk_size("NBD server unix:/s export ''", 1 << 61).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported);
        assert!(e.to_string().contains("2.0 EiB"), "{e}");
        assert!(e.to_string().contains("256 TiB"), "{e}");
        assert!(!e.to_string().contains('\n'));
    }
}
