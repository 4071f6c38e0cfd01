//! Kubernetes' `$(VAR)` expansion, as the kubelet applies it to a container's `command`, `args`,
//! `env[].value` and `volumeMounts[].subPathExpr`: `$(NAME)` becomes the variable's value,
//! `$$` becomes `$`, and a reference to an undefined variable (or an unclosed `$(`) stays as
//! written.

/// `input` with every `$(NAME)` that `lookup` knows replaced by its value.
pub(super) fn expand(input: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        let after = &rest[dollar + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            // `$$` is an escaped `$`.
            out.push('$');
            rest = tail;
        } else if let Some(reference) = after.strip_prefix('(')
            && let Some(close) = reference.find(')')
        {
            let name = &reference[..close];
            match lookup(name) {
                Some(value) => out.push_str(&value),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &reference[close + 1..];
        } else {
            // A lone `$`, or `$(` without its `)`: kept verbatim.
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::expand;

    fn env(name: &str) -> Option<String> {
        match name {
            "POD_NAME" => Some("trainer-0".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn a_defined_reference_is_replaced_by_its_value() {
        assert_eq!(expand("--pod=$(POD_NAME)/x", env), "--pod=trainer-0/x");
        assert_eq!(expand("a$(EMPTY)b", env), "ab");
    }

    #[test]
    fn an_undefined_reference_stays_as_written() {
        assert_eq!(
            expand("$(MISSING) $(POD_NAME)", env),
            "$(MISSING) trainer-0"
        );
    }

    #[test]
    fn a_double_dollar_escapes_a_reference() {
        assert_eq!(expand("$$(POD_NAME)", env), "$(POD_NAME)");
        assert_eq!(expand("$$$(POD_NAME)", env), "$trainer-0");
        assert_eq!(expand("cost: $$5", env), "cost: $5");
    }

    #[test]
    fn shell_syntax_and_unclosed_references_pass_through() {
        assert_eq!(expand("echo $MY_IP ${X} $", env), "echo $MY_IP ${X} $");
        assert_eq!(expand("$(POD_NAME", env), "$(POD_NAME");
    }
}
