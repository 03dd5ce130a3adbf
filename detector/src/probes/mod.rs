//! Which probe goes where (`plan`, pure) and putting them into the kernel (`attach`,
//! the only module that knows aya's API).
pub mod attach;
pub mod budget;
pub mod detacher;
pub mod extrapolate;
pub mod guardian;
pub mod multi;
pub mod plan;
pub mod privileges;
pub mod uprobe;
