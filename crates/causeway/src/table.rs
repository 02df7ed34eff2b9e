//! Columns as kubectl and istioctl print them: each padded to its widest cell, two spaces apart,
//! no trailing blanks.

/// The header and rows as a table; the columns at the `right_aligned` indexes (numbers, as
/// `kubectl top` prints them) are padded on the left.
pub fn table(header: &[&str], rows: &[Vec<String>], right_aligned: &[usize]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|cell| cell.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let header: Vec<String> = header.iter().map(|cell| (*cell).to_owned()).collect();
    let mut out = String::new();
    for row in std::iter::once(&header).chain(rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(index, (cell, width))| {
                if right_aligned.contains(&index) {
                    format!("{cell:>width$}")
                } else {
                    format!("{cell:<width$}")
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_pad_to_the_widest_cell_and_numbers_may_align_right() {
        let rows = vec![
            vec!["cluster01".to_owned(), "5".to_owned()],
            vec!["c2".to_owned(), "12".to_owned()],
        ];
        assert_eq!(
            table(&["NAME", "N"], &rows, &[]),
            "NAME       N\ncluster01  5\nc2         12\n"
        );
        assert_eq!(
            table(&["NAME", "N"], &rows, &[1]),
            "NAME        N\ncluster01   5\nc2         12\n"
        );
    }
}
