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

/// Renders `template` for `messages`, ending with the assistant's turn when
/// `add_generation_prompt` is set.
pub fn render(
    template: &str,
    messages: &[Message],
    bos_token: &str,
    eos_token: &str,
    add_generation_prompt: bool,
) -> Result<String> {
    let mut env = Environment::new();
    minijinja_contrib::add_to_environment(&mut env);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", |msg: String| -> Result<String, Error> {
        Err(Error::new(ErrorKind::InvalidOperation, msg))
    });
    env.add_template("chat", template).context("the model's chat template does not parse")?;
    let tmpl = env.get_template("chat")?;
    let out = tmpl
        .render(context! {
            messages => minijinja::Value::from(minijinja::value::Serde(messages)),
            add_generation_prompt => add_generation_prompt,
            bos_token => bos_token,
            eos_token => eos_token,
        })
        .context("the model's chat template failed to render")?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are helpful<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] | trim + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn chatml_with_default_system() {
        let m = [Message { role: "user".into(), content: " Hi \n".into() }];
        let s = render(CHATML, &m, "", "", true).unwrap();
        assert_eq!(
            s,
            "<|im_start|>system\nYou are helpful<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn python_string_methods_and_raise() {
        let t = "{{ messages[0].content.strip().upper() }}";
        let m = [Message { role: "user".into(), content: "  ab ".into() }];
        assert_eq!(render(t, &m, "", "", false).unwrap(), "AB");
        let t = "{{ raise_exception('no system role') }}";
        let err = render(t, &m, "", "", false).unwrap_err();
        assert!(format!("{err:#}").contains("no system role"));
    }
}
