//! Chat templates: the Jinja template stored in the model file (`tokenizer.chat_template`),
//! rendered with minijinja and Python-compatible string methods.

use anyhow::{Context, Result};
use minijinja::{context, Environment, Error, ErrorKind};
use serde::Serialize;

/// One message of a conversation.
#[derive(Clone, Debug, Serialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// The fuel (minijinja's budget for one render: about one unit per instruction executed and
/// one per 64 bytes of data made) that a conversation may use. SmolLM2's and Qwen2.5's templates
/// take about 35-40 per message and one per 16 bytes of content; this allows eight times that,
/// plus a fixed 100 000 for the template's own text. A template from a model file that loops
/// or builds strings without end then fails with a clear error instead of holding the caller's
/// thread or exhausting memory.
pub fn fuel_for(messages: &[Message]) -> u64 {
    let bytes: usize = messages
        .iter()
        .map(|m| m.role.len() + m.content.len())
        .sum();
    100_000 + 320 * messages.len() as u64 + bytes as u64 / 2
}

/// Renders `template` for `messages`, ending with the assistant's turn when
/// `add_generation_prompt` is set, within the fuel of [`fuel_for`].
pub fn render(
    template: &str,
    messages: &[Message],
    bos_token: &str,
    eos_token: &str,
    add_generation_prompt: bool,
) -> Result<String> {
    let fuel = fuel_for(messages);
    render_with_fuel(
        template,
        messages,
        bos_token,
        eos_token,
        add_generation_prompt,
        fuel,
    )
}

/// [`render`] within `fuel`.
fn render_with_fuel(
    template: &str,
    messages: &[Message],
    bos_token: &str,
    eos_token: &str,
    add_generation_prompt: bool,
    fuel: u64,
) -> Result<String> {
    let mut env = Environment::new();
    env.set_fuel(Some(fuel));
    minijinja_contrib::add_to_environment(&mut env);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", |msg: String| -> Result<String, Error> {
        Err(Error::new(ErrorKind::InvalidOperation, msg))
    });
    env.add_template("chat", template)
        .context("the model's chat template does not parse")?;
    let tmpl = env.get_template("chat")?;
    let out = tmpl
        .render(context! {
            messages => minijinja::Value::from(minijinja::value::Serde(messages)),
            add_generation_prompt => add_generation_prompt,
            bos_token => bos_token,
            eos_token => eos_token,
        })
        .map_err(|e| match e.kind() {
            ErrorKind::OutOfFuel => anyhow::anyhow!(
                "the model's chat template did more work than a conversation of {} messages \
                 allows (minijinja fuel {fuel}): it may loop without end",
                messages.len()
            ),
            _ => anyhow::Error::new(e).context("the model's chat template failed to render"),
        })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are helpful<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] | trim + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn chatml_with_default_system() {
        let m = [Message {
            role: "user".into(),
            content: " Hi \n".into(),
        }];
        let s = render(CHATML, &m, "", "", true).unwrap();
        assert_eq!(
            s,
            "<|im_start|>system\nYou are helpful<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    fn chat(n: usize, len: usize) -> Vec<Message> {
        (0..n)
            .map(|i| Message {
                role: if i % 2 == 0 { "user" } else { "assistant" }.into(),
                content: "x".repeat(len),
            })
            .collect()
    }

    #[test]
    fn ordinary_conversations_render_within_an_eighth_of_their_fuel() {
        for (n, len) in [(1, 10), (1, 100_000), (1000, 100)] {
            let m = chat(n, len);
            let out = render_with_fuel(CHATML, &m, "", "", true, fuel_for(&m) / 8).unwrap();
            assert!(out.len() > n * len, "{n} messages of {len} bytes");
        }
    }

    #[test]
    fn a_template_that_loops_without_end_runs_out_of_fuel() {
        let m = chat(3, 10);
        for t in [
            "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
            "{% for a in range(100000) %}{{ 'x' * 100000 }}{% endfor %}",
        ] {
            let err = render(t, &m, "", "", true).unwrap_err();
            let msg = format!("{err:#}");
            assert!(msg.contains("loop without end"), "{msg}");
        }
    }

    #[test]
    fn python_string_methods_and_raise() {
        let t = "{{ messages[0].content.strip().upper() }}";
        let m = [Message {
            role: "user".into(),
            content: "  ab ".into(),
        }];
        assert_eq!(render(t, &m, "", "", false).unwrap(), "AB");
        let t = "{{ raise_exception('no system role') }}";
        let err = render(t, &m, "", "", false).unwrap_err();
        assert!(format!("{err:#}").contains("no system role"));
    }
}
