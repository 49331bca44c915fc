//! Arguments several commands share: paging and sort order.

use clap::{Args, ValueEnum};
use fib_flow::{Order, Page, PageRequest};

/// Sort direction of a listing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum SortOrder {
    /// Oldest first.
    #[default]
    Asc,
    /// Newest first.
    Desc,
}

/// `--limit`, `--offset` and `--order`: the library's page request (limit 1..=1000).
#[derive(Debug, Clone, Args)]
pub struct PageArgs {
    /// Rows per page (1 to 1000).
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
    /// Rows to skip (the next page starts at offset + limit).
    #[arg(long, default_value_t = 0)]
    pub offset: u64,
    /// Sort direction.
    #[arg(long, value_enum, default_value_t = SortOrder::Asc)]
    pub order: SortOrder,
}

impl PageArgs {
    /// The page request the library validates.
    pub fn request(&self) -> PageRequest {
        PageRequest::limit(self.limit)
            .offset(self.offset)
            .order(match self.order {
                SortOrder::Asc => Order::Asc,
                SortOrder::Desc => Order::Desc,
            })
    }
}

/// The line under a paged table: which rows were shown and how to get the next ones.
pub fn page_footer<T>(page: &Page<T>, noun: &str) -> String {
    if page.items.is_empty() {
        return format!("no {noun} on this page ({} in all)", page.total);
    }
    let first = page.offset + 1;
    let last = page.offset + page.items.len() as u64;
    let mut footer = format!("{noun} {first}-{last} of {}", page.total);
    if page.has_more {
        footer.push_str(&format!("; next page: --offset {last}"));
    }
    footer
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(items: usize, total: u64, offset: u64) -> Page<()> {
        Page {
            items: vec![(); items],
            total,
            limit: 2,
            offset,
            has_more: offset + (items as u64) < total,
        }
    }

    #[test]
    fn the_footer_points_at_the_next_page_only_when_there_is_one() {
        assert_eq!(
            page_footer(&page(2, 5, 0), "tasks"),
            "tasks 1-2 of 5; next page: --offset 2"
        );
        assert_eq!(page_footer(&page(1, 5, 4), "tasks"), "tasks 5-5 of 5");
        assert_eq!(
            page_footer(&page(0, 5, 10), "tasks"),
            "no tasks on this page (5 in all)"
        );
    }
}
