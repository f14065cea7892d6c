//! The boards this binary knows: the one it was built for (a cargo feature) and every other
//! board's data, so `--board` can apply another board's limits.

use edgellm_board::Board;

/// Every board, by name.
pub const ALL: [Board; 6] = [
    edgellm_board_host::BOARD,
    edgellm_board_pi_zero_2w::BOARD,
    edgellm_board_pi4::BOARD,
    edgellm_board_pi5::BOARD,
    edgellm_board_jetson_nano::BOARD,
    edgellm_board_jetson_orin::BOARD,
];

#[cfg(all(
    feature = "board-pi-zero-2w",
    not(feature = "board-pi4"),
    not(feature = "board-pi5"),
    not(feature = "board-jetson-nano"),
    not(feature = "board-jetson-orin")
))]
/// The board this binary was built for.
pub const BOARD: Board = edgellm_board_pi_zero_2w::BOARD;
#[cfg(all(
    feature = "board-pi4",
    not(feature = "board-pi5"),
    not(feature = "board-jetson-nano"),
    not(feature = "board-jetson-orin")
))]
/// The board this binary was built for.
pub const BOARD: Board = edgellm_board_pi4::BOARD;
#[cfg(all(
    feature = "board-pi5",
    not(feature = "board-jetson-nano"),
    not(feature = "board-jetson-orin")
))]
/// The board this binary was built for.
pub const BOARD: Board = edgellm_board_pi5::BOARD;
#[cfg(all(feature = "board-jetson-nano", not(feature = "board-jetson-orin")))]
/// The board this binary was built for.
pub const BOARD: Board = edgellm_board_jetson_nano::BOARD;
#[cfg(feature = "board-jetson-orin")]
/// The board this binary was built for.
pub const BOARD: Board = edgellm_board_jetson_orin::BOARD;
#[cfg(not(any(
    feature = "board-pi-zero-2w",
    feature = "board-pi4",
    feature = "board-pi5",
    feature = "board-jetson-nano",
    feature = "board-jetson-orin"
)))]
/// The board this binary was built for.
pub const BOARD: Board = edgellm_board_host::BOARD;

/// The board named `name`, or an error listing the known ones.
pub fn by_name(name: &str) -> anyhow::Result<Board> {
    ALL.iter().copied().find(|b| b.name == name).ok_or_else(|| {
        let names: Vec<&str> = ALL.iter().map(|b| b.name).collect();
        anyhow::anyhow!(
            "unknown board {name:?}: known boards are {}",
            names.join(", ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_found() {
        for b in ALL {
            assert_eq!(by_name(b.name).unwrap(), b);
            assert!(b.memory_budget_bytes <= b.ram_bytes, "{}", b.name);
            assert!(!b.cores.inference.is_empty() && b.default_threads <= b.cores.inference.len());
        }
        assert!(by_name("pi6")
            .unwrap_err()
            .to_string()
            .contains("pi-zero-2w"));
    }
}
