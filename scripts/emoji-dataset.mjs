// Builds the emoji demo dataset: an image folder (one subfolder per class) from npm's
// `emoji-datasource-twitter` (Twemoji, CC-BY 4.0 by Twitter, Inc. and contributors) or
// `emoji-datasource-google` (Noto Emoji, Apache-2.0), grouped by the package's own
// category/subcategory into eight classes that read well at 64×64.
//
//   npm install --no-save emoji-datasource-twitter@16.0.0
//   node scripts/emoji-dataset.mjs node_modules/emoji-datasource-twitter data/emoji
//   jit-native train --data folder:data/emoji --flip false …   (docs/demo-models.md)
//
// Skin-tone variants of hands count as extra images of the same class.
import { copyFileSync, existsSync, mkdirSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";

const [pkg, out] = process.argv.slice(2);
if (!pkg || !out) {
  console.error("usage: node scripts/emoji-dataset.mjs PATH/TO/emoji-datasource-SET OUT_DIR");
  process.exit(2);
}
const set = JSON.parse(readFileSync(join(pkg, "package.json"), "utf8")).name.replace("emoji-datasource-", "");
const images = join(pkg, "img", set, "64");
if (!existsSync(images)) {
  console.error(`${images} is missing: is ${pkg} an emoji-datasource-* package?`);
  process.exit(2);
}

/** The class of an emoji, or null to leave it out (text-like symbols, people, components). */
function classOf({ category, subcategory }) {
  if (category === "Smileys & Emotion" && /^(face-|cat-face|monkey-face)/.test(subcategory)) return "faces";
  if (category === "People & Body" && /^hand|^hands$/.test(subcategory)) return "hands";
  if (category === "Animals & Nature" && subcategory.startsWith("animal-")) return "animals";
  if (category === "Animals & Nature" && subcategory.startsWith("plant-")) return "plants";
  if (category === "Food & Drink" && /fruit|vegetable/.test(subcategory)) return "plants";
  if (category === "Food & Drink") return "food";
  if (category === "Travel & Places" && subcategory.startsWith("transport-")) return "vehicles";
  if (category === "Travel & Places" && subcategory.startsWith("place-")) return "buildings";
  if (category === "Flags") return "flags";
  return null;
}

const emoji = JSON.parse(readFileSync(join(pkg, "emoji.json"), "utf8"));
rmSync(out, { recursive: true, force: true });
const counts = {};
for (const e of emoji) {
  const cls = classOf(e);
  if (!cls || !e[`has_img_${set}`]) continue;
  const files = [e.image];
  if (cls === "hands") {
    for (const v of Object.values(e.skin_variations ?? {})) if (v[`has_img_${set}`]) files.push(v.image);
  }
  mkdirSync(join(out, cls), { recursive: true });
  for (const f of files) {
    copyFileSync(join(images, f), join(out, cls, f));
    counts[cls] = (counts[cls] ?? 0) + 1;
  }
}
console.log(Object.entries(counts).map(([k, v]) => `${k} ${v}`).join(", "));
