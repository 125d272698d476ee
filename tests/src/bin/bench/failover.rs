pub fn run(_quick: bool) -> crate::report::Section {
    crate::report::Section::new("failover", "todo")
}
