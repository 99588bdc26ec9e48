"""Small multilingual corpus that the demo tokenizer and its bigram text model learn from."""

from __future__ import annotations

DOCUMENTS: tuple[str, ...] = (
    """The river runs past the old mill and into the valley, where the town keeps its market on \
Saturday mornings. Farmers bring apples, bread, cheese and honey. Children run between the \
stalls while their parents talk about the weather, the harvest and the price of wood.

In the afternoon the square is quiet again. A few people sit in the shade of the trees and read. \
The baker closes his shop early, and the last bus leaves for the city at six o'clock.""",
    """A notebook is a good place to try an idea. You write a small piece of code, run it, and look \
at the result. If the result is wrong, you change one line and run the cell again. This short \
loop makes it easy to learn, because every step is visible.

Good notes explain why a step matters, not only what it does. When you come back to the \
notebook a week later, you will be glad that you wrote them.""",
    """Here is a short Python function that counts words in a text:

```python
from collections import Counter


def count_words(text: str) -> dict[str, int]:
    \"\"\"Return how often each word appears.\"\"\"
    words = text.lower().split()
    return dict(Counter(words))


if __name__ == "__main__":
    print(count_words("the cat and the hat"))
```

The function splits the text on white space, so punctuation stays attached to the words.""",
    """## Shopping list

- apples and pears
- two loaves of bread
- milk, butter and eggs
- a bag of rice

| Item   | Price | Count |
|--------|------:|------:|
| apples |  3.50 |     6 |
| bread  |  2.20 |     2 |
| milk   |  1.10 |     3 |

**Total:** about 18 euros. Remember to *check* the list before you leave.""",
    """def fibonacci(n: int) -> list[int]:
    \"\"\"Return the first n Fibonacci numbers.\"\"\"
    values = [0, 1]
    while len(values) < n:
        values.append(values[-1] + values[-2])
    return values[:n]


class Stack:
    def __init__(self) -> None:
        self.items: list[object] = []

    def push(self, item: object) -> None:
        self.items.append(item)

    def pop(self) -> object:
        if not self.items:
            raise IndexError("pop from an empty stack")
        return self.items.pop()
""",
    """नमस्ते! आज मौसम बहुत अच्छा है। हम बाज़ार जा रहे हैं और वहाँ से फल और सब्ज़ियाँ खरीदेंगे। \
मेरी माँ को आम बहुत पसंद हैं, इसलिए हम आम भी लेंगे।

भारत एक बड़ा देश है। यहाँ बहुत सारी भाषाएँ बोली जाती हैं। हिंदी, बंगाली, तमिल और तेलुगु \
कुछ प्रमुख भाषाएँ हैं। दुनिया भर के लोग भारत की संस्कृति और खाने को पसंद करते हैं।""",
    """สวัสดีครับ วันนี้อากาศดีมาก เราจะไปตลาดเพื่อซื้อผลไม้และผัก ประเทศไทยมีอาหารอร่อยมากมาย \
เช่น ต้มยำกุ้ง ผัดไทย และส้มตำ

คนไทยชอบยิ้มและพูดคุยกับเพื่อน ขอบคุณมากครับ แล้วพบกันใหม่""",
    """你好，世界！今天天气很好，我们去公园散步。公园里有很多人，有的在跑步，有的在看书。\
学习编程很有意思，每天写一点代码，慢慢就会进步。

中文和日文都使用汉字，但是读音不同。我们一起学习吧。""",
    """こんにちは、世界。今日はとても良い天気です。私は公園で本を読みます。\
日本語の文章には、ひらがな、カタカナ、漢字が使われます。プログラミングはとても楽しいです。

ありがとうございます。また明日会いましょう。""",
    """Great news 🎉 the build is green ✅ and the tests pass 🙂

Next steps:
1. Write the release notes 📝
2. Tag the version 🚀
3. Tell the team ❤️

Thanks for your help 👍 See you tomorrow 😊""",
    """# Getting started

Install the package and load the extension in a notebook:

```bash
pip install ct2-magics
```

Then ask a question in a cell:

```python
%load_ext ct2_magics
%llama What is the capital of France?
```

The answer appears below the cell, one word at a time. You can stop it at any moment.""",
    """Once upon a time there was a small robot who lived in a library. Every night, when the \
lights went out, the robot walked between the shelves and read one book. It read about the sea, \
about the mountains and about people who had lived long ago.

One morning the librarian found the robot asleep on a pile of books. She smiled, put a blanket \
over it and said: "You may stay here as long as you like." The robot never left the library.""",
    """Q: Why is the sky blue?

A: Sunlight is made of many colours. When it passes through the air, the short blue waves are \
scattered more than the long red waves, so blue light reaches our eyes from every part of the \
sky. At sunset the light travels through more air, and the sky turns orange and red.""",
    """import json
from pathlib import Path


def load_settings(path: Path) -> dict:
    \"\"\"Read the settings file, or return defaults when it is missing.\"\"\"
    if not path.exists():
        return {"theme": "light", "font_size": 14}
    with path.open(encoding="utf-8") as handle:
        return json.load(handle)


for key, value in load_settings(Path("settings.json")).items():
    print(f"{key} = {value}")
""",
    """Hello! I am a small demo model. My weights are random, so my answers do not mean anything, \
but I can show how text streams into a notebook, how long answers wrap, and how a reply stops. \
Ask me anything and I will answer with a mix of words, code and emoji 🙂""",
)
