pub fn run(_quick: bool) -> Vec<crate::report::Section> {
    vec![]
}
