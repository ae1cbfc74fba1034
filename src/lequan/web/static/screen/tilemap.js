// Schematic tile charts of Shanghai's 16 districts and of the 31 provinces,
// drawn by hand: each region is one or more square cells of a grid, placed
// in roughly its geographic position (north up). No boundary data set with
// a licence that allows redistribution covers the current districts, so the
// screen shows tiles, not a map, and says so in its credits. Codes and names
// are those of src/lequan/data/regions.csv (a unit test keeps them equal).

// code: [name, name_en, short name, cells as [column, row]]
export const CITY_TILES = {
  "310151": ["崇明区", "Chongming", "崇明", [[3, 0], [4, 0]]],
  "310114": ["嘉定区", "Jiading", "嘉定", [[1, 1]]],
  "310113": ["宝山区", "Baoshan", "宝山", [[2, 1], [3, 1]]],
  "310118": ["青浦区", "Qingpu", "青浦", [[0, 2]]],
  "310107": ["普陀区", "Putuo", "普陀", [[1, 2]]],
  "310106": ["静安区", "Jing'an", "静安", [[2, 2]]],
  "310109": ["虹口区", "Hongkou", "虹口", [[3, 2]]],
  "310110": ["杨浦区", "Yangpu", "杨浦", [[4, 2]]],
  "310117": ["松江区", "Songjiang", "松江", [[0, 3], [0, 4]]],
  "310105": ["长宁区", "Changning", "长宁", [[1, 3]]],
  "310104": ["徐汇区", "Xuhui", "徐汇", [[2, 3]]],
  "310101": ["黄浦区", "Huangpu", "黄浦", [[3, 3]]],
  "310115": ["浦东新区", "Pudong", "浦东", [[4, 3], [3, 4], [4, 4], [4, 5]]],
  "310112": ["闵行区", "Minhang", "闵行", [[1, 4], [2, 4]]],
  "310116": ["金山区", "Jinshan", "金山", [[0, 5], [1, 5]]],
  "310120": ["奉贤区", "Fengxian", "奉贤", [[2, 5], [3, 5]]],
};

export const NATIONAL_TILES = {
  "150000": ["内蒙古自治区", "Inner Mongolia", "内蒙古", [[3, 0], [4, 0], [5, 0], [6, 0]]],
  "230000": ["黑龙江省", "Heilongjiang", "黑龙江", [[7, 0]]],
  "650000": ["新疆维吾尔自治区", "Xinjiang", "新疆", [[0, 1], [1, 1], [0, 2]]],
  "620000": ["甘肃省", "Gansu", "甘肃", [[2, 1], [2, 2]]],
  "640000": ["宁夏回族自治区", "Ningxia", "宁夏", [[3, 1]]],
  "140000": ["山西省", "Shanxi", "山西", [[4, 1]]],
  "110000": ["北京市", "Beijing", "北京", [[5, 1]]],
  "210000": ["辽宁省", "Liaoning", "辽宁", [[6, 1]]],
  "220000": ["吉林省", "Jilin", "吉林", [[7, 1]]],
  "630000": ["青海省", "Qinghai", "青海", [[1, 2]]],
  "610000": ["陕西省", "Shaanxi", "陕西", [[3, 2]]],
  "410000": ["河南省", "Henan", "河南", [[4, 2]]],
  "130000": ["河北省", "Hebei", "河北", [[5, 2]]],
  "120000": ["天津市", "Tianjin", "天津", [[6, 2]]],
  "540000": ["西藏自治区", "Tibet", "西藏", [[0, 3], [1, 3]]],
  "510000": ["四川省", "Sichuan", "四川", [[2, 3]]],
  "500000": ["重庆市", "Chongqing", "重庆", [[3, 3]]],
  "420000": ["湖北省", "Hubei", "湖北", [[4, 3]]],
  "340000": ["安徽省", "Anhui", "安徽", [[5, 3]]],
  "370000": ["山东省", "Shandong", "山东", [[6, 3]]],
  "530000": ["云南省", "Yunnan", "云南", [[2, 4]]],
  "520000": ["贵州省", "Guizhou", "贵州", [[3, 4]]],
  "430000": ["湖南省", "Hunan", "湖南", [[4, 4]]],
  "360000": ["江西省", "Jiangxi", "江西", [[5, 4]]],
  "320000": ["江苏省", "Jiangsu", "江苏", [[6, 4]]],
  "310000": ["上海市", "Shanghai", "上海", [[7, 4]]],
  "450000": ["广西壮族自治区", "Guangxi", "广西", [[3, 5]]],
  "440000": ["广东省", "Guangdong", "广东", [[4, 5]]],
  "350000": ["福建省", "Fujian", "福建", [[5, 5]]],
  "330000": ["浙江省", "Zhejiang", "浙江", [[6, 5]]],
  "460000": ["海南省", "Hainan", "海南", [[4, 6]]],
};

/** The outline of a region's cells: every cell's edges, those two cells share
 * cancelled, the rest chained into rings (in grid units, y growing down). */
function outline(cells) {
  const key = (x, y) => `${x},${y}`;
  const edges = new Map();
  const add = (x0, y0, x1, y1) => {
    const reverse = `${key(x1, y1)}>${key(x0, y0)}`;
    if (edges.has(reverse)) {
      edges.delete(reverse);
    } else {
      edges.set(`${key(x0, y0)}>${key(x1, y1)}`, [x0, y0, x1, y1]);
    }
  };
  for (const [c, r] of cells) {
    add(c, r, c + 1, r);
    add(c + 1, r, c + 1, r + 1);
    add(c + 1, r + 1, c, r + 1);
    add(c, r + 1, c, r);
  }
  const from = new Map();
  for (const [x0, y0, x1, y1] of edges.values()) {
    from.set(key(x0, y0), [x1, y1]);
  }
  const rings = [];
  while (from.size) {
    const [start] = from.keys();
    const ring = [];
    let at = start;
    while (from.has(at)) {
      const [x, y] = at.split(",").map(Number);
      ring.push([x, y]);
      const next = from.get(at);
      from.delete(at);
      at = key(next[0], next[1]);
    }
    ring.push(ring[0]);
    rings.push(ring);
  }
  return rings;
}

/** GeoJSON of a tile layout, for ``echarts.registerMap``; a feature's name is
 * its region code, and ``cp`` (where ECharts puts the label) its cells' centre. */
export function tilesGeoJson(tiles) {
  const features = Object.entries(tiles).map(([code, [, , , cells]]) => {
    const rings = outline(cells).map((ring) => ring.map(([x, y]) => [x, -y]));
    const cx = cells.reduce((sum, [c]) => sum + c + 0.5, 0) / cells.length;
    const cy = cells.reduce((sum, [, r]) => sum + r + 0.5, 0) / cells.length;
    return {
      type: "Feature",
      properties: { name: code, cp: [cx, -cy] },
      geometry: { type: "Polygon", coordinates: rings },
    };
  });
  return { type: "FeatureCollection", features };
}
